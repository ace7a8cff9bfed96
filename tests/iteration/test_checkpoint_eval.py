"""A fine-tuning job scores its checkpoints on a held-out suite and registers the best one.

The tiny model really trains: 96 examples at a constant, high learning rate overfit, so held-out
exact match peaks mid-run and falls after; the job must register the peak, not the last step.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from evalhub.composition import job_handlers
from evalhub.eval.store import EvalStore
from evalhub.finetune import files, service
from evalhub.finetune.errors import ParamError
from evalhub.finetune.handler import SCORED_DIR, job_dir, stored_checkpoints
from evalhub.finetune.protocol import FineTuneJobCreate
from evalhub.finetune.tasks import as_eval_cases, upper_case_task, write_jsonl
from evalhub.iteration import checkpoints
from evalhub.jobs import JobContext, JobStatus, Worker
from evalhub.platform import Platform
from evalhub.settings import Settings
from registry.artifacts import compute_tree
from tests.finetune.conftest import register_tiny_base

SUITE = """\
name: upper
version: "1"
dataset: upper-held-out
sampling: {temperature: 0, max_tokens: 24, seed: 0}
metrics:
  - name: exact_match
  - name: chrf
"""
HELD_OUT_CASES = 40


def held_out_cases(n: int = HELD_OUT_CASES) -> list[dict[str, Any]]:
    return as_eval_cases(upper_case_task(n, seed=0, split="held_out"))


def request(training_file: str, **evalhub: Any) -> FineTuneJobCreate:
    options = {
        "method": "lora",
        "rank": 16,
        "max_steps": 200,
        "warmup_ratio": 0.1,
        "scheduler": "constant",
        "eval": {"suite": SUITE, "metric": "exact_match", "every": 50},
    }
    return FineTuneJobCreate.model_validate(
        {
            "model": "tiny",
            "training_file": training_file,
            "suffix": "upper",
            "seed": 0,
            "hyperparameters": {"batch_size": 16, "learning_rate_multiplier": 40},
            "evalhub": options | evalhub,
        }
    )


@pytest.fixture
def ready(platform, tiny_base: Path, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    register_tiny_base(platform, tiny_base)
    platform.registry.add_dataset_version(
        "upper-held-out", write_jsonl(tmp_path / "cases.jsonl", held_out_cases()),
        format="eval", create=True,
    )  # fmt: skip
    train = write_jsonl(tmp_path / "train.jsonl", upper_case_task(96, seed=0))
    return files.create_file(platform, train, filename="train.jsonl", purpose="fine-tune").id


def create(platform, body: FineTuneJobCreate):  # type: ignore[no-untyped-def]
    return service.create_job(platform, body, plan_eval=partial(checkpoints.plan, platform))


# Training is the same on both databases; the refusals below run on both.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_best_checkpoint_by_the_suite_is_registered_not_the_last(platform, ready) -> None:  # type: ignore[no-untyped-def]
    job = create(platform, request(ready))
    assert Worker(platform.jobs, job_handlers(platform)).run_once()
    done = platform.jobs.get(job.id)
    assert done.status is JobStatus.SUCCEEDED, done.error

    scored = done.result["checkpoints"]
    assert [entry["step"] for entry in scored] == list(range(50, 201, 50))
    values = [entry["value"] for entry in scored]
    best = done.result["selected"]
    assert (
        best["value"] == max(values) and best["step"] == scored[values.index(max(values))]["step"]
    )
    # Overfitting: the peak is before the end and better than the last step (by how much depends
    # on the CPU's rounding: 0.1 on one machine, 0.075 on another).
    assert best["step"] < 200 and best["value"] > values[-1], values

    # What is registered is the selected checkpoint's model files, not the final adapter.
    version = platform.registry.resolve(done.result["version_ref"])
    selected_dir = job_dir(platform, job.id) / SCORED_DIR / f"step-{best['step']}"
    assert version.digest == compute_tree(selected_dir).digest == best["digest"]
    recorded = version.metrics
    assert recorded["selected_step"] == best["step"]
    assert [e["step"] for e in recorded["checkpoint_evals"]] == [e["step"] for e in scored]
    assert recorded["suite_exact_match"] == best["value"]

    # Every checkpoint is a stored eval run of the suite, linked to the version.
    store = EvalStore(platform.engine)
    for entry in scored:
        run = store.run(entry["run_id"])
        assert run.suite_name == "upper" and len(run.results) == HELD_OUT_CASES
        assert run.metrics["exact_match"].aggregate.value == entry["value"]
    lineage = platform.registry.lineage(version.model, version.version)
    linked = {e.target_id: e.attributes for e in lineage.downstream if e.relation == "evaluated_in"}
    assert set(linked) == {entry["run_id"] for entry in scored}
    assert [a["checkpoint_step"] for a in linked.values() if a["selected"]] == [best["step"]]

    # Scores arrive as job events while training runs, and on the checkpoints.
    events = [
        e for e in platform.jobs.events(job.id) if (e.data or {}).get("type") == "checkpoint_eval"
    ]
    assert [e.data["step"] for e in events] == [entry["step"] for entry in scored]
    listed = service.list_checkpoints(platform, job.id, limit=100).data
    assert {c.step_number: c.metrics.eval["value"] for c in listed} == {
        e["step"]: e["value"] for e in scored
    }
    view = service.job_view(done).evalhub["checkpoint_eval"]
    assert view["metric"] == "exact_match" and view["selected"]["step"] == best["step"]

    # Scoring does not change training: the same job unscored ends with the same adapter.
    plain = create(platform, _plain(ready))
    assert Worker(platform.jobs, job_handlers(platform)).run_once()
    unscored = platform.registry.resolve(platform.jobs.get(plain.id).result["version_ref"])
    assert compute_tree(job_dir(platform, job.id) / "final").digest == unscored.digest


def _plain(training_file: str) -> FineTuneJobCreate:
    body = request(training_file)
    body.evalhub.eval = None
    return body


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"metric": "bleu"}, "evalhub.eval.metric", "has no metric 'bleu'"),
        (
            {"suite": SUITE.replace("upper-held-out", "cases.jsonl")},
            "evalhub.eval.dataset",
            "names the file",
        ),
        (
            {"suite": SUITE.replace("exact_match", "exact_matchh")},
            "evalhub.eval.suite",
            "cannot run",
        ),
        ({"every": 30}, "evalhub.eval.every", "multiple of checkpoint_every"),
    ],
)
def test_a_bad_checkpoint_eval_is_refused_and_creates_nothing(  # type: ignore[no-untyped-def]
    platform, ready, change: dict[str, Any], param: str, words: str
) -> None:
    spec = {"suite": SUITE, "metric": "exact_match", "every": 50} | change
    extra = {"checkpoint_every": 20} if "every" in change else {}
    with pytest.raises(ParamError) as refused:
        create(platform, request(ready, eval=spec, **extra))
    assert refused.value.param == param and words in refused.value.message
    assert platform.jobs.search(kind="fine_tune").data == []


class WorkerDied(Exception):
    """Stands for the worker process dying: raised from inside the running handler."""


class DiesAfterScoringStep4(JobContext):
    def event(self, message: str, *, level: str = "info", data: dict | None = None) -> None:
        super().event(message, level=level, data=data)
        if message.startswith("Step 4 on the suite"):
            raise WorkerDied()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_job_resumed_on_another_home_registers_a_checkpoint_scored_before(
    database_url: str, tiny_base: Path, tmp_path: Path
) -> None:
    """Two homes share the database and an artifact store, as two machines would: the second
    resumes from the checkpoint the first stored, and registers the first's scored checkpoint."""
    first, second = (
        Platform.open(
            Settings(
                home=tmp_path / name,
                database_url=database_url,
                artifact_url=str(tmp_path / "shared-store"),
                _env_file=None,
            )
        )
        for name in ("first", "second")
    )
    try:
        register_tiny_base(first, tiny_base)
        # Answers the model cannot give: every checkpoint scores 0, and the tie goes to step 4.
        cases = [case | {"expected": "§§§"} for case in held_out_cases(4)]
        first.registry.add_dataset_version(
            "upper-held-out", write_jsonl(tmp_path / "cases.jsonl", cases),
            format="eval", create=True,
        )  # fmt: skip
        train = write_jsonl(tmp_path / "train.jsonl", upper_case_task(32, seed=0))
        uploaded = files.create_file(first, train, filename="train.jsonl", purpose="fine-tune")
        spec = {"suite": SUITE, "metric": "exact_match", "every": 4}
        job = create(first, request(uploaded.id, max_steps=8, checkpoint_every=4, eval=spec))
        claimed = first.jobs.claim("doomed-worker", ["fine_tune"])
        assert claimed is not None
        with pytest.raises(WorkerDied):
            job_handlers(first)["fine_tune"](DiesAfterScoringStep4(claimed, first.jobs, "doomed"))

        assert first.jobs.requeue_stale(timedelta(0)) == [job.id]
        assert Worker(second.jobs, job_handlers(second)).run_once()
        done = second.jobs.get(job.id)
        assert done.status is JobStatus.SUCCEEDED, done.error
        messages = [event.message for event in second.jobs.events(job.id)]
        stored = stored_checkpoints(second, job.id)
    finally:
        first.close()
        second.close()

    assert sorted(stored) == [4, 8]
    resumed = [message for message in messages if message.startswith("Resuming from")]
    assert resumed == [
        f"Resuming from checkpoint step-4, fetched from the artifact store ({stored[4]})"
    ]
    assert sum(message.startswith("Step 4 on the suite") for message in messages) == 1
    assert done.result["selected"]["step"] == 4
    scored_on_first = job_dir(first, job.id) / SCORED_DIR / "step-4"
    assert not (job_dir(second, job.id) / "checkpoints" / "step-4").exists()
    assert done.result["digest"] == compute_tree(scored_on_first).digest
