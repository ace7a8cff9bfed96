"""Fine-tuning on several ranks of one machine: torchrun with 2 gloo ranks on the CPU.

Two ranks, each taking half of every global batch, must train what one process trains: the same
loss at every step and the same weights, equal within float32 rounding (the ranks sum gradients
in another order). Tolerances: losses within a relative 1e-4, tensors within
`torch.allclose(rtol=1e-4, atol=1e-5)`; a wrong weighting or a lost share is off by far more.
The data has 17 examples in batches of 8, so one micro-batch has a single row and rank 1 none.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from evalhub.cli.finetune import RunConfig
from evalhub.cli.main import app
from evalhub.composition import job_handlers
from evalhub.finetune import files, service
from evalhub.finetune.config import TrainConfig
from evalhub.finetune.errors import ParamError
from evalhub.finetune.handler import job_dir
from evalhub.finetune.protocol import FineTuneJobCreate
from evalhub.finetune.ranks import RankConfig
from evalhub.finetune.tasks import upper_case_task, write_jsonl
from evalhub.finetune.torchrun import RUN_DIR, launch
from evalhub.finetune.trainer import Trainer
from evalhub.iteration.reproduce import recorded_recipe
from evalhub.jobs import JobStatus, Worker
from tests.finetune.conftest import register_tiny_base

LOSS_TOLERANCE = 1e-4
RTOL, ATOL = 1e-4, 1e-5


def assert_same_tensors(first: Path, second: Path) -> None:
    one, two = load_file(str(first)), load_file(str(second))
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=RTOL, atol=ATOL), name


def upload(platform, path: Path) -> str:  # type: ignore[no-untyped-def]
    return files.create_file(platform, path, filename=path.name, purpose="fine-tune").id


LORA = {"method": "lora", "rank": 4, "dropout": 0.0}  # dropout draws its masks per rank


def job_request(
    train: str, validation: str, method: dict[str, Any] = LORA, **evalhub: Any
) -> FineTuneJobCreate:
    return FineTuneJobCreate.model_validate(
        {
            "model": "tiny",
            "training_file": train,
            "validation_file": validation,
            "suffix": "upper",
            "seed": 7,
            "hyperparameters": {"batch_size": 8},
            "evalhub": {
                **method,
                "max_steps": 6,
                "grad_accum": 2,
                "learning_rate": 3e-3,
                "checkpoint_every": 3,
                **evalhub,
            },
        }
    )


@pytest.fixture
def uploaded(platform, tiny_base: Path, tmp_path: Path) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    register_tiny_base(platform, tiny_base)
    train = write_jsonl(tmp_path / "train.jsonl", upper_case_task(17, seed=3))
    validation = write_jsonl(tmp_path / "val.jsonl", upper_case_task(5, seed=1, split="held_out"))
    return upload(platform, train), upload(platform, validation)


def losses(platform, job_id: str) -> list[float]:  # type: ignore[no-untyped-def]
    return [
        event.data["train_loss"]
        for event in platform.jobs.events(job_id)
        if event.data and event.data.get("type") == "metrics"
    ]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_two_rank_lora_job_matches_a_one_process_job(platform, uploaded) -> None:  # type: ignore[no-untyped-def]
    one = service.create_job(platform, job_request(*uploaded))
    two = service.create_job(platform, job_request(*uploaded, distributed={"nproc_per_node": 2}))
    worker = Worker(platform.jobs, job_handlers(platform))
    assert worker.run_once() and worker.run_once()
    for job in (one, two):
        finished = platform.jobs.get(job.id)
        assert finished.status is JobStatus.SUCCEEDED, finished.error

    assert len(losses(platform, one.id)) == 6
    assert losses(platform, two.id) == pytest.approx(losses(platform, one.id), rel=LOSS_TOLERANCE)
    messages = [event.message for event in platform.jobs.events(two.id)]
    assert "Launching torchrun with 2 ranks" in messages
    assert "Started training at step 0 of 6 on 2 ranks" in messages
    assert [c.step_number for c in service.list_checkpoints(platform, two.id).data] == [6, 3]

    single, ranked = (
        platform.registry.resolve(platform.jobs.get(job.id).result["version_ref"])
        for job in (one, two)
    )
    assert_same_tensors(
        platform.registry.model_path(single.ref) / "adapter_model.safetensors",
        platform.registry.model_path(ranked.ref) / "adapter_model.safetensors",
    )
    assert ranked.metrics["valid_loss"] == pytest.approx(single.metrics["valid_loss"], rel=1e-4)
    assert ranked.metrics["trained_tokens"] == single.metrics["trained_tokens"]
    assert ranked.hyperparameters["environment"]["ranks"] == 2
    assert ranked.hyperparameters["train_config"]["distributed"] == {"nproc_per_node": 2}
    recipe = recorded_recipe(platform, ranked)  # what `evalhub versions reproduce` retrains
    assert recipe["train_config"]["distributed"] == {"nproc_per_node": 2}
    assert service.get_job(platform, two.id).evalhub["distributed"] == {"nproc_per_node": 2}


def test_full_fine_tuning_on_two_ranks_with_fsdp_matches_one_process_and_resumes(
    tiny_base: Path, tmp_path: Path
) -> None:
    data = upper_case_task(17, seed=3)
    validation = upper_case_task(5, seed=1, split="held_out")
    config = TrainConfig(
        method="full",
        max_steps=4,
        batch_size=8,
        grad_accum=2,
        learning_rate=1e-3,
        eval_every=2,
        checkpoint_every=2,
        seed=7,
        distributed={"nproc_per_node": 2},
    )
    events: list[dict[str, Any]] = []
    single = Trainer(config, tiny_base, tmp_path / "single", on_event=events.append).run(
        data, validation
    )
    train_file = write_jsonl(tmp_path / "train.jsonl", data)
    rank_config = RankConfig(
        train_config=config,
        base_model=tiny_base,
        base_model_ref="tiny/1",
        out_dir=tmp_path / "ranks",
        train_file=train_file,
        validation_file=write_jsonl(tmp_path / "val.jsonl", validation),
    )
    ranked_events: list[dict[str, Any]] = []
    ranked, where = launch(
        rank_config,
        2,
        tmp_path / "ranks" / RUN_DIR,
        on_event=ranked_events.append,
        check_cancelled=lambda: None,
    )
    assert where == {"device": "cpu", "ranks": 2}

    def series(found: list[dict[str, Any]], key: str) -> list[float]:
        return [event[key] for event in found if event["type"] == "step" and key in event]

    assert len(series(events, "loss")) == 4
    for key in ("loss", "val_loss", "grad_norm"):
        assert series(ranked_events, key) == pytest.approx(series(events, key), rel=1e-4), key
    assert ranked.train_tokens == single.train_tokens
    assert_same_tensors(
        single.output_dir / "model.safetensors", ranked.output_dir / "model.safetensors"
    )
    assert {"config.json", "tokenizer.json"} <= {p.name for p in ranked.output_dir.iterdir()}

    # A job claimed again resumes from rank 0's checkpoint: the optimizer state FSDP gathered is
    # sharded again, and the run ends where the uninterrupted one ended.
    resumed, _ = launch(
        rank_config.model_copy(
            update={"out_dir": tmp_path / "resumed", "resume_from": ranked.checkpoints[0]}
        ),
        2,
        tmp_path / "resumed" / RUN_DIR,
        on_event=lambda event: None,
        check_cancelled=lambda: None,
    )
    name = "model.safetensors"
    assert (resumed.output_dir / name).read_bytes() == (ranked.output_dir / name).read_bytes()


def rank_processes(config_path: Path) -> list[int]:
    """Processes whose command line names the run's rank config: torchrun and its ranks."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and str(config_path).encode() in (entry / "cmdline").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cancelling_a_distributed_job_stops_torchrun_and_its_ranks(platform, uploaded) -> None:  # type: ignore[no-untyped-def]
    job = service.create_job(
        platform,
        job_request(*uploaded, max_steps=100_000, distributed={"nproc_per_node": 2}),
    )
    worker = Worker(platform.jobs, job_handlers(platform), heartbeat_seconds=0.2).start()
    try:
        deadline = time.monotonic() + 120
        while not losses(platform, job.id):
            assert time.monotonic() < deadline, "the ranks never reported a step"
            time.sleep(0.3)
        config_path = job_dir(platform, job.id) / RUN_DIR / "rank_config.json"
        assert len(rank_processes(config_path)) == 3  # torchrun and 2 ranks
        platform.jobs.cancel(job.id)
        while platform.jobs.get(job.id).status is JobStatus.RUNNING:
            assert time.monotonic() < deadline + 60, "the job did not stop"
            time.sleep(0.3)
    finally:
        worker.stop()
    assert platform.jobs.get(job.id).status is JobStatus.CANCELLED
    assert rank_processes(config_path) == []


def test_bad_distributed_options_are_refused_before_anything_is_stored(  # type: ignore[no-untyped-def]
    platform, uploaded, tmp_path: Path
) -> None:
    cases = [
        ({"nproc_per_node": 0}, "greater than or equal to 1"),
        ({"nproc_per_node": 17}, "less than or equal to 16"),
        ({"nproc_per_node": "2"}, "valid integer"),
        ({"nproc_per_node": 2.5}, "valid integer"),
        ({"gpus": 2}, "nproc_per_node"),
    ]
    for options, expected in cases:
        with pytest.raises(ValueError, match=expected):
            job_request(*uploaded, distributed=options)
    for evalhub, expected in (
        ({"distributed": {"nproc_per_node": 3}}, "batch_size 8 must be a multiple of"),
        ({"method": {"method": "galore"}, "distributed": {"nproc_per_node": 2}}, "cannot run"),
    ):
        with pytest.raises(ParamError) as refused:
            service.create_job(platform, job_request(*uploaded, **evalhub))
        assert refused.value.param == "evalhub" and expected in refused.value.message
    assert service.list_jobs(platform).data == []

    job = tmp_path / "job.yaml"
    job.write_text("model: tiny\ntraining_file: train.jsonl\ndistributed: {nproc_per_node: 2}\n")
    (tmp_path / "train.jsonl").write_text("")
    from evalhub.cli.finetune import load_run_config

    body = load_run_config(job).job_body("file-1", None)
    assert body["evalhub"]["distributed"] == {"nproc_per_node": 2}
    assert RunConfig(model="tiny", training_file=job).job_body("f", None)["evalhub"] == {
        "method": "lora",
        "executor": "local",
    }
    runner = CliRunner()
    env = {"EVALHUB_HOME": str(tmp_path / "home"), "EVALHUB_URL": ""}
    refused = runner.invoke(app, ["finetune", "run", str(job), "--nproc-per-node", "0"], env=env)
    assert refused.exit_code == 2 and "--nproc-per-node" in refused.stderr
    job.write_text("model: tiny\ntraining_file: train.jsonl\ndistributed: {nproc_per_node: 40}\n")
    refused = runner.invoke(app, ["finetune", "run", str(job)], env=env)
    assert refused.exit_code == 1 and "distributed.nproc_per_node" in refused.stderr
