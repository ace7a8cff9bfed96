"""Reproducing a registered fine-tuned version: retrain it from its lineage, compare the digests.

The tiny model really trains (40 steps), twice or three times: as the job registered it, as a
reproduction (bit-identical on CPU), and with a changed seed (a different digest, the seed
named). Bad input is refused through the service, the REST route and the CLI, storing nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from evalhub.api.app import create_app
from evalhub.auth.tokens import create_token
from evalhub.cli.main import app as cli_app
from evalhub.composition import job_handlers
from evalhub.finetune import files
from evalhub.finetune.config import TrainConfig
from evalhub.finetune.handler import job_dir
from evalhub.finetune.protocol import FineTuneJobCreate
from evalhub.finetune.tasks import upper_case_task, write_jsonl
from evalhub.iteration import reproduce
from evalhub.jobs import JobStatus, Worker
from registry.artifacts import compute_tree
from registry.errors import ErrorCode, RegistryError
from tests.conftest import save_lora_adapter
from tests.finetune.conftest import register_tiny_base
from tests.iteration.test_checkpoint_eval import SUITE, create, held_out_cases

API = "/api/v1"
STEPS = 40


def job_request(training_file: str, **evalhub: Any) -> FineTuneJobCreate:
    options = {"method": "lora", "rank": 8, "max_steps": STEPS, "warmup_ratio": 0.05}
    return FineTuneJobCreate.model_validate(
        {
            "model": "tiny",
            "training_file": training_file,
            "suffix": "upper",
            "seed": 0,
            "hyperparameters": {"batch_size": 16, "learning_rate_multiplier": 20},
            "evalhub": options | evalhub,
        }
    )


@pytest.fixture
def training_file(platform, tiny_base: Path, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    register_tiny_base(platform, tiny_base)
    train = write_jsonl(tmp_path / "train.jsonl", upper_case_task(64, seed=0))
    return files.create_file(platform, train, filename="train.jsonl", purpose="fine-tune").id


def editor(platform) -> dict[str, str]:  # type: ignore[no-untyped-def]
    _, secret = create_token(platform.engine, "editor-token", "editor", actor="test")
    return {"Authorization": f"Bearer {secret}"}


def run_jobs(platform) -> None:  # type: ignore[no-untyped-def]
    worker = Worker(platform.jobs, job_handlers(platform))
    while worker.run_once():
        pass


def fine_tune(platform, body: FineTuneJobCreate) -> str:  # type: ignore[no-untyped-def]
    job = create(platform, body)
    run_jobs(platform)
    done = platform.jobs.get(job.id)
    assert done.status is JobStatus.SUCCEEDED, done.error
    return str(done.result["version_ref"])


def registry_state(platform) -> tuple[Any, ...]:  # type: ignore[no-untyped-def]
    versions = platform.registry.search_versions("tiny-upper", limit=100).data
    return tuple((v.ref, v.digest, tuple(v.aliases)) for v in versions)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_suite_selected_version_reproduces_bit_for_bit_and_a_changed_seed_differs(  # type: ignore[no-untyped-def]
    platform, training_file: str, tmp_path: Path
) -> None:
    platform.registry.add_dataset_version(
        "upper-held-out", write_jsonl(tmp_path / "cases.jsonl", held_out_cases(20)),
        format="eval", create=True,
    )  # fmt: skip
    scored = {"suite": SUITE, "metric": "exact_match", "every": 20}
    ref = fine_tune(platform, job_request(training_file, eval=scored))
    version = platform.registry.resolve(ref)
    platform.registry.set_alias("tiny-upper", "candidate", version.version)
    # The lineage holds what reproduction needs; tags can be edited, the lineage cannot.
    recorded = version.hyperparameters
    assert recorded["environment"]["device"] == "cpu"
    assert recorded["environment"]["torch_threads"] == 1
    assert set(recorded["environment"]["libraries"]) >= {"torch", "transformers", "peft"}
    assert recorded["checkpoint_eval"]["metric"] == "exact_match"
    assert recorded["train_dataset_digest"].startswith("sha256:")
    assert recorded["base_digest"] == version.base_digest
    before = registry_state(platform)

    # As recorded, through the REST route: the same selected step, the same bytes.
    with TestClient(create_app(platform=platform), headers=editor(platform)) as client:
        queued = client.post(f"{API}/models/tiny-upper/versions/{version.version}/reproduce")
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["id"]
        assert queued.json()["checkpoint_eval"] is True
        run_jobs(platform)
        answer = client.get(f"{API}/reproductions/{job_id}").json()
        events = client.get(f"{API}/reproductions/{job_id}/events").json()
    assert answer["status"] == "succeeded", answer["error"]
    report = answer["report"]
    assert report["identical"] is True and report["differences"] == []
    assert report["differing_files"] == []
    assert report["reproduced_digest"] == report["recorded_digest"] == version.digest
    metrics = {m["name"]: (m["recorded"], m["reproduced"]) for m in report["metrics"]}
    selected, suite_score = metrics["selected_step"], metrics["suite_exact_match"]
    assert selected[0] == selected[1] == version.metrics["selected_step"]
    assert suite_score[0] == suite_score[1] == version.metrics["suite_exact_match"]
    assert metrics["step 20 exact_match"][0] == metrics["step 20 exact_match"][1]
    assert Path(report["directory"]).is_relative_to(job_dir(platform, job_id))
    assert compute_tree(Path(report["directory"])).digest == version.digest
    assert any("bit for bit" in event["message"] for event in events)
    assert any((event["data"] or {}).get("type") == "metrics" for event in events)

    # "What if it had been trained with seed 1": another adapter, and the seed is named.
    changed = reproduce.submit(
        platform, ref, reproduce.ReproduceRequest(overrides={"seed": 1}), actor="test"
    )
    run_jobs(platform)
    result = reproduce.get(platform, changed.id)
    assert result.status is JobStatus.SUCCEEDED, result.error
    assert result.report is not None and result.report.identical is False
    assert result.report.reproduced_digest != version.digest
    assert result.report.differing_files == ["adapter_model.safetensors"]
    (seed,) = [d for d in result.report.differences if d.name == "seed"]
    assert (seed.recorded, seed.reproduced, seed.cause) == (0, 1, "override")
    side = {m.name: m for m in result.report.metrics}
    assert side["suite_exact_match"].recorded == version.metrics["suite_exact_match"]
    assert side["suite_exact_match"].reproduced is not None

    # Neither reproduction registered a version nor moved an alias.
    assert registry_state(platform) == before
    assert platform.registry.resolve("tiny-upper@candidate").ref == ref


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_cli_follows_the_job_and_exits_by_the_outcome(  # type: ignore[no-untyped-def]
    platform, training_file: str, cli_env: dict[str, str]
) -> None:
    ref = fine_tune(platform, job_request(training_file, max_steps=20))
    before = registry_state(platform)
    runner = CliRunner()

    same = runner.invoke(cli_app, ["versions", "reproduce", ref], env=cli_env)
    assert same.exit_code == 0, same.output
    assert "identical" in same.stdout and f"{ref} reproduced bit for bit" in same.stdout

    seeded = runner.invoke(
        cli_app, ["versions", "reproduce", ref, "--override", "seed=1", "--json"], env=cli_env
    )
    assert seeded.exit_code == 1, seeded.output
    report = json.loads(seeded.stdout)
    assert report["identical"] is False and report["overrides"] == {"seed": 1}
    assert [d["name"] for d in report["differences"]] == ["seed"]
    assert registry_state(platform) == before


@pytest.fixture
def bad_refs(platform, tiny_base: Path, tmp_path: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A base version, and an adapter registered from a directory (no training job)."""
    base = register_tiny_base(platform, tiny_base)
    adapter = save_lora_adapter(tiny_base, tmp_path / "adapter", base_name=base)
    platform.registry.create_model("hand-made", "adapter")
    uploaded = platform.registry.register_version("hand-made", adapter, base=base).ref
    return {"base": base, "uploaded": uploaded}


def test_bad_input_is_refused_and_stores_nothing(  # type: ignore[no-untyped-def]
    platform, bad_refs: dict[str, str], cli_env: dict[str, str]
) -> None:
    cases = [
        (bad_refs["base"], {}, "is a base model version, not a fine-tuned one", 400),
        (bad_refs["uploaded"], {}, "has no recorded training job", 400),
        ("nothing/1", {}, "nothing", 404),
    ]
    for ref, overrides, words, status in cases:
        with pytest.raises(RegistryError) as refused:
            reproduce.submit(platform, ref, reproduce.ReproduceRequest(overrides=overrides))
        assert words in refused.value.message
        assert refused.value.code is (
            ErrorCode.NOT_FOUND if status == 404 else ErrorCode.INVALID_ARGUMENT
        )

    with TestClient(create_app(platform=platform), headers=editor(platform)) as client:
        name, number = bad_refs["base"].split("/")
        answer = client.post(f"{API}/models/{name}/versions/{number}/reproduce")
        assert answer.status_code == 400
        assert "not a fine-tuned one" in answer.json()["error"]["message"]
        answer = client.post(f"{API}/models/nothing/versions/1/reproduce")
        assert answer.status_code == 404
        answer = client.post(
            f"{API}/models/hand-made/versions/1/reproduce", json={"overrides": {"seed": [1]}}
        )
        assert answer.status_code == 422
        assert client.get(f"{API}/reproductions/reproduce-nope").status_code == 404

    runner = CliRunner()
    for args, words in [
        ([bad_refs["base"]], "not a fine-tuned one"),
        ([bad_refs["uploaded"]], "has no recorded training job"),
        (["nothing/1"], "nothing"),
        ([bad_refs["uploaded"], "--override", "seed"], "write KEY=VALUE"),
    ]:
        done = runner.invoke(cli_app, ["versions", "reproduce", *args], env=cli_env)
        assert done.exit_code == 2, done.output
        assert words in done.output and "Traceback" not in done.output

    assert platform.jobs.search(kind=reproduce.KIND).data == []


def test_an_override_that_is_not_a_training_option_is_refused() -> None:
    recorded = TrainConfig(max_steps=10).model_dump(mode="json")
    with pytest.raises(RegistryError, match="cannot override 'method'"):
        reproduce.apply_overrides(recorded, {"method": "full"})
    with pytest.raises(RegistryError, match="not valid training options"):
        reproduce.apply_overrides(recorded, {"learning_rate": -1})
    with pytest.raises(RegistryError, match="invalid options for method 'lora': rnak"):
        reproduce.apply_overrides(recorded, {"method_options.rnak": 4})
    changed = reproduce.apply_overrides(recorded, {"seed": 3, "method_options.rank": 4})
    assert (changed.seed, changed.method_options["rank"]) == (3, 4)
