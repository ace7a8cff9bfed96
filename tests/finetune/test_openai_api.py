"""The managed-service flow with the stock `openai` client against a real `evalhub serve`.

Upload, create, poll until succeeded, events, checkpoints, the registered adapter with its lineage
and held-out exact match, its `ft:` id answering with no backend command (started on demand);
cancel; refusals in OpenAI's error format that create nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from evalhub.auth.tokens import create_token
from evalhub.child_server import child_server
from evalhub.finetune.generation import evaluate_exact_match
from evalhub.finetune.service import resolve_fine_tuned_model
from evalhub.finetune.tasks import upper_case_task, write_jsonl
from evalhub.platform import Platform
from evalhub.settings import Settings
from tests.finetune.conftest import register_tiny_base

# One worker builds this module's server (a module fixture), under --dist loadgroup.
pytestmark = pytest.mark.xdist_group("finetune-openai-api")

FINISHED = {"succeeded", "failed", "cancelled"}


class Served:
    def __init__(self, url: str, tokens: dict[str, str], settings: Settings) -> None:
        self.url = url
        self.tokens = tokens
        self.settings = settings

    def client(self, role: str = "editor") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.tokens[role], max_retries=0)


@pytest.fixture(scope="module")
def served(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`evalhub serve` (with its in-process worker) on SQLite, the tiny base registered first."""
    root = tmp_path_factory.mktemp("served")
    settings = Settings(home=root / "home", _env_file=None)
    platform = Platform.open(settings)
    register_tiny_base(platform, tiny_base)
    tokens = {
        role: create_token(platform.engine, f"{role}-token", role, actor="test")[1]
        for role in ("viewer", "editor")
    }
    platform.close()
    with child_server(settings.home) as child:
        assert httpx.get(f"{child.url}/readyz").json()["status"] == "ok"
        yield Served(child.url, tokens, settings)


def wait_for(client: openai.OpenAI, job_id: str, until: set[str], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


def test_upload_train_poll_events_checkpoints_and_lineage(served: Served, tmp_path: Path) -> None:
    client = served.client()
    train = write_jsonl(tmp_path / "train.jsonl", upper_case_task(1600, seed=0))
    held_out = upper_case_task(100, seed=0, split="held_out")
    val = write_jsonl(tmp_path / "val.jsonl", held_out)
    with train.open("rb") as handle:
        training_file = client.files.create(file=handle, purpose="fine-tune")
    validation_file = client.files.create(file=val, purpose="fine-tune")
    assert training_file.id.startswith("file-") and training_file.bytes == train.stat().st_size
    assert client.files.retrieve(training_file.id).filename == "train.jsonl"
    assert client.files.content(validation_file.id).read() == val.read_bytes()
    assert {f.id for f in client.files.list()} >= {training_file.id, validation_file.id}

    started = time.monotonic()
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=training_file.id,
        validation_file=validation_file.id,
        suffix="upper",
        seed=0,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 2,
                    "batch_size": 16,
                    "learning_rate_multiplier": 15,
                }
            },
        },
        extra_body={"evalhub": {"method": "lora", "rank": 16, "warmup_ratio": 0.05}},
    )
    assert job.status == "queued" and job.hyperparameters.n_epochs == 2
    job = wait_for(client, job.id, FINISHED)
    seconds = time.monotonic() - started
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny:upper:{job.id}"
    assert job.trained_tokens and job.trained_tokens > 0

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=50))  # pages through all
    metrics = [event for event in events if event.type == "metrics"]
    assert len(metrics) == 200
    assert {"step", "train_loss", "learning_rate"} <= set(metrics[0].data)
    assert metrics[0].data["step"] == 200  # newest first
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [200, 150, 100, 50]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-200"
    assert checkpoints[0].metrics.valid_loss is not None

    platform = Platform.open(served.settings)
    try:
        ref = resolve_fine_tuned_model(platform, job.fine_tuned_model)
        version = platform.registry.resolve(ref)
        assert ref == "tiny-upper/1" and version.kind.value == "adapter"
        assert version.base == "tiny/1" and version.training_job == job.id
        assert version.dataset == "tiny-upper-train/1"
        assert platform.registry.resolve_dataset(version.dataset).digest.endswith(
            training_file.model_extra["digest"].split(":")[1]
        )
        assert version.metrics["valid_exact_match"] >= 0.8
        exact_match = evaluate_exact_match(
            platform.registry.model_path(ref),
            held_out,
            max_new_tokens=16,
            base_model=platform.registry.model_path("tiny/1"),
        )
    finally:
        platform.close()
    print(f"job took {seconds:.1f} s; held-out exact match {exact_match:.2f}")
    assert exact_match >= 0.8

    page = client.fine_tuning.jobs.list(limit=1)
    assert page.data[0].id == job.id

    # The fine-tuned model id answers with no backend command: on the embedded home the gateway
    # starts a local backend for its base on the first request.
    hits = 0
    for example in held_out:
        reply = client.chat.completions.create(
            model=job.fine_tuned_model,
            messages=example["messages"][:1],
            max_tokens=16,
            temperature=0,
        )
        assert reply.model == job.fine_tuned_model
        hits += reply.choices[0].message.content == example["messages"][1]["content"]
    assert hits / len(held_out) >= 0.8
    backends = httpx.get(
        f"{served.url}/api/v1/backends",
        headers={"Authorization": f"Bearer {served.tokens['viewer']}"},
    ).json()
    assert [(b["name"], b["base"], b["created_by"]) for b in backends] == [
        ("auto-tiny-1", "tiny/1", "gateway:on-demand")
    ]


def test_cancel_a_running_job(served: Served, tmp_path: Path) -> None:
    client = served.client()
    train = write_jsonl(tmp_path / "train.jsonl", upper_case_task(64, seed=9))
    training_file = client.files.create(file=train, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny/1",
        training_file=training_file.id,
        suffix="cancel",
        extra_body={"evalhub": {"method": "lora", "max_steps": 100_000}},
    )
    deadline = time.monotonic() + 60
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id).data):
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.3)
    assert client.fine_tuning.jobs.cancel(job.id).status == "running"  # asked to stop
    job = wait_for(client, job.id, FINISHED, timeout=30)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)
    assert "tiny-cancel" not in {m["name"] for m in _models(served)}


def _models(served: Served) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {served.tokens['viewer']}"}
    return httpx.get(f"{served.url}/api/v1/models", headers=headers).json()["data"]


def test_refusals_in_openai_error_format_create_nothing(served: Served, tmp_path: Path) -> None:
    client = served.client()
    jobs_before = [job.id for job in client.fine_tuning.jobs.list(limit=100)]
    bad = tmp_path / "bad.jsonl"
    rows = [e for e in upper_case_task(12, seed=2)]
    rows[4] = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}
    write_jsonl(bad, rows)
    bad_file = client.files.create(file=bad, purpose="fine-tune")
    good_file = client.files.create(
        file=write_jsonl(tmp_path / "ok.jsonl", upper_case_task(12, seed=3)), purpose="fine-tune"
    )

    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="tiny", training_file=bad_file.id, suffix="bad")
    error = refused.value.body
    assert refused.value.status_code == 400 and error["param"] == "training_file"
    assert "line 5: unrecognized_role" in error["message"]
    assert error["type"] == "invalid_request_error"

    with pytest.raises(openai.NotFoundError) as refused:
        client.fine_tuning.jobs.create(model="gpt-nope", training_file=good_file.id)
    assert refused.value.body["param"] == "model" and refused.value.body["code"] == "not_found"

    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(
            model="tiny", training_file=good_file.id, hyperparameters={"n_epochs": 500}
        )
    assert refused.value.body["param"] == "hyperparameters.n_epochs"

    for distributed, param in (
        ({"nproc_per_node": 0}, "evalhub.distributed.nproc_per_node"),
        ({"nproc_per_node": 5}, "evalhub"),  # batch_size 8 does not split into 5 ranks
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(
                model="tiny",
                training_file=good_file.id,
                hyperparameters={"batch_size": 8},
                extra_body={"evalhub": {"distributed": distributed}},
            )
        assert refused.value.body["param"] == param, refused.value.body

    with pytest.raises(openai.PermissionDeniedError):
        served.client("viewer").fine_tuning.jobs.create(model="tiny", training_file=good_file.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-missing")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0).files.list()

    assert [job.id for job in client.fine_tuning.jobs.list(limit=100)] == jobs_before
    assert "tiny-bad" not in {m["name"] for m in _models(served)}
    assert client.files.delete(bad_file.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(bad_file.id)
