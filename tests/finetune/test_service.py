"""The fine-tuning service and its job handler in process, on SQLite and PostgreSQL.

Refusals at creation leave nothing behind; a worker killed mid-job resumes from its checkpoint and
ends with exactly the adapter an uninterrupted run produces.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from evalhub.composition import job_handlers
from evalhub.finetune import files, service
from evalhub.finetune.errors import ParamError
from evalhub.finetune.handler import run_fine_tune
from evalhub.finetune.protocol import FineTuneJobCreate
from evalhub.finetune.tasks import upper_case_task, write_jsonl
from evalhub.jobs import JobContext, JobStatus, Worker
from registry.errors import RegistryError
from tests.finetune.conftest import register_tiny_base


class SimulatedCrash(Exception):
    """Stands for the worker process dying: raised from inside the running handler."""


class CrashingContext(JobContext):
    def event(self, message: str, *, level: str = "info", data: dict | None = None) -> None:
        super().event(message, level=level, data=data)
        if message.startswith("Checkpoint saved at step 4"):
            raise SimulatedCrash()


def upload(platform, path: Path) -> str:  # type: ignore[no-untyped-def]
    return files.create_file(platform, path, filename=path.name, purpose="fine-tune").id


def short_request(training_file: str, **overrides: Any) -> FineTuneJobCreate:
    body: dict[str, Any] = {
        "model": "tiny",
        "training_file": training_file,
        "suffix": "upper",
        "seed": 3,
        "hyperparameters": {"batch_size": 8, "learning_rate_multiplier": 15},
        "evalhub": {"method": "lora", "rank": 8, "max_steps": 8, "checkpoint_every": 4},
    }
    body.update(overrides)
    return FineTuneJobCreate.model_validate(body)


@pytest.fixture
def ready(platform, tiny_base: Path, tmp_path: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    register_tiny_base(platform, tiny_base)
    train = write_jsonl(tmp_path / "train.jsonl", upper_case_task(64, seed=4))
    return {"train": upload(platform, train)}


def test_resume_after_the_worker_dies_matches_an_uninterrupted_run(platform, ready) -> None:  # type: ignore[no-untyped-def]
    queue = platform.jobs
    interrupted = service.create_job(platform, short_request(ready["train"]))
    claimed = queue.claim("doomed-worker", ["fine_tune"])
    assert claimed is not None and claimed.id == interrupted.id
    with pytest.raises(SimulatedCrash):
        run_fine_tune(CrashingContext(claimed, queue, "doomed-worker"), platform)
    assert queue.get(interrupted.id).status is JobStatus.RUNNING

    assert queue.requeue_stale(timedelta(0)) == [interrupted.id]
    worker = Worker(queue, job_handlers(platform))
    assert worker.run_once()
    resumed = queue.get(interrupted.id)
    assert resumed.status is JobStatus.SUCCEEDED, resumed.error
    assert resumed.attempts == 2
    messages = [event.message for event in queue.events(interrupted.id)]
    assert "Resuming from checkpoint step-4" in messages
    assert "Resumed training at step 4 of 8" in messages

    whole = service.create_job(platform, short_request(ready["train"]))
    assert worker.run_once()
    assert queue.get(whole.id).status is JobStatus.SUCCEEDED

    first = platform.registry.resolve(service.resolve_fine_tuned_model(platform, service.get_job(platform, interrupted.id).fine_tuned_model))  # fmt: skip
    second = platform.registry.resolve(resumed_ref := f"tiny-upper/{first.version + 1}")
    assert resumed_ref == "tiny-upper/2" and second.training_job == whole.id
    assert first.digest == second.digest  # bit-identical adapters
    assert first.training_job == interrupted.id and first.base == "tiny/1"
    assert first.dataset == "tiny-upper-train/1" and first.seed == 3
    assert first.hyperparameters["method"] == "lora" and first.code_version.startswith("evalhub")
    assert first.tags["fine_tuned_model"].startswith("ft:tiny:upper:ftjob-")
    assert "lib.torch" in first.tags and first.tags["device"] == "cpu"
    steps = [c.step_number for c in service.list_checkpoints(platform, interrupted.id).data]
    assert steps == [8, 4]


def test_refusals_create_nothing(platform, ready, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(example) for example in upper_case_task(12, seed=1)]
    lines[2] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    lines[6] = "{not json"
    bad.write_text("\n".join(lines) + "\n")
    bad_id = upload(platform, bad)

    def refused(request: FineTuneJobCreate) -> ParamError:
        with pytest.raises(ParamError) as caught:
            service.create_job(platform, request)
        return caught.value

    error = refused(short_request(bad_id))
    assert error.param == "training_file"
    assert "line 3: example_missing_assistant_message" in error.message
    assert "line 7: invalid_json" in error.message

    error = refused(short_request(ready["train"], model="nope"))
    assert error.param == "model" and error.code.value == "NOT_FOUND"
    error = refused(short_request(ready["train"], evalhub={"method": "qlora"}))
    assert error.param == "evalhub" and "qlora needs a CUDA GPU" in error.message
    error = refused(short_request(ready["train"], evalhub={"method": "lora", "rank": 0}))
    assert error.param == "evalhub" and "rank" in error.message
    error = refused(short_request(ready["train"], evalhub={"method": "sgd"}))
    assert error.param == "evalhub.method" and "known methods" in error.message
    error = refused(short_request(ready["train"], method={"type": "dpo"}))
    assert error.param == "method.type"
    error = refused(short_request("file-missing"))
    assert error.param == "training_file" and error.code.value == "NOT_FOUND"

    assert service.list_jobs(platform).data == []
    assert platform.registry.search_datasets().data == []
    with pytest.raises(RegistryError):
        platform.registry.get_model("tiny-upper")


def test_hyperparameter_ranges_are_checked() -> None:
    for bad in ({"n_epochs": 0}, {"batch_size": 1000}, {"learning_rate_multiplier": -1}):
        with pytest.raises(ValueError, match="must be 'auto' or"):
            short_request("file-x", hyperparameters=bad)
    with pytest.raises(ValueError, match="lower-case"):
        short_request("file-x", suffix="Bad Suffix!")
    resolved = service.resolve_hyperparameters(short_request("f").hyperparameters, "lora", 64)
    assert resolved["n_epochs"] == service.AUTO_EPOCHS and resolved["batch_size"] == 8


def test_resolve_fine_tuned_model_refuses_unknown_ids(platform) -> None:  # type: ignore[no-untyped-def]
    for model_id in ("gpt-4o", "ft:tiny:x:ftjob-000"):
        with pytest.raises(RegistryError, match=r"fine-tuned model|no fine-tuning job"):
            service.resolve_fine_tuned_model(platform, model_id)
