"""A worker elsewhere: machines that share only PostgreSQL and an S3 bucket (moto's real S3 API).

The server (home A, no worker of its own) takes a fine-tuning job; `evalhub worker` on home B
trains it until it is killed with SIGKILL after a checkpoint; `evalhub worker` on home C, which
meanwhile ran the same job uninterrupted, requeues the job once its heartbeat is stale, fetches
the newest checkpoint from the bucket and ends with the same adapter; the server's gateway serves
it. The workers' homes start empty: the base model and the dataset come from the bucket.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from evalhub.auth.tokens import create_token
from evalhub.child_server import INHERITED_SETTINGS, child_server
from evalhub.finetune.service import resolve_fine_tuned_model
from evalhub.finetune.tasks import upper_case_task, write_jsonl
from evalhub.platform import Platform
from evalhub.settings import Settings
from registry.artifacts import compute_tree
from tests.conftest import Bucket
from tests.finetune.conftest import register_tiny_base

pytestmark = [pytest.mark.xdist_group("worker-elsewhere"), pytest.mark.postgres]

STEPS, EVERY = 64, 4
FINISHED = {"succeeded", "failed", "cancelled"}


class Workers:
    """`evalhub worker` processes, each on a home of its own; all killed when the test ends."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, home: Path) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{home.name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "evalhub", "worker", "--poll", "0.2"],
            env={**self.env, "EVALHUB_HOME": str(home)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def output(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.logs.glob("*.log")))


@pytest.fixture
def workers(tmp_path: Path, database_url: str, bucket: Bucket) -> Iterator[Workers]:
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_SETTINGS}
    env.update(machine_env(database_url, bucket))
    started = Workers(env, logs)
    try:
        yield started
    finally:
        started.stop_all()


def machine_env(database_url: str, bucket: Bucket) -> dict[str, str]:
    """What every machine is given: the database, the bucket, and a short heartbeat."""
    return {
        "EVALHUB_DATABASE_URL": database_url,
        "EVALHUB_ARTIFACT_URL": bucket.url,
        "EVALHUB_ARTIFACT_OPTIONS": bucket.artifact_options,
        "EVALHUB_WORKER_HEARTBEAT_SECONDS": "0.5",
        "EVALHUB_WORKER_STALE_SECONDS": "5",
        "OMP_NUM_THREADS": "1",
    }


def wait_for_event(platform: Platform, job_id: str, prefix: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(event.message.startswith(prefix) for event in platform.jobs.events(job_id)):
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reported {prefix!r}")


def wait_for_job(client: openai.OpenAI, job_id: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in FINISHED:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


def create_job(client: openai.OpenAI, training_file: str) -> Any:
    return client.fine_tuning.jobs.create(
        model="tiny",
        training_file=training_file,
        suffix="elsewhere",
        seed=3,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"batch_size": 8, "learning_rate_multiplier": 15}},
        },
        extra_body={
            "evalhub": {"method": "lora", "rank": 8, "max_steps": STEPS, "checkpoint_every": EVERY}
        },
    )


def registered_digest(platform: Platform, fine_tuned_model: str) -> str:
    return platform.registry.resolve(resolve_fine_tuned_model(platform, fine_tuned_model)).digest


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_killed_workers_job_is_resumed_elsewhere_to_the_same_adapter(
    database_url: str, bucket: Bucket, workers: Workers, tiny_base: Path, tmp_path: Path
) -> None:
    homes = {name: tmp_path / name for name in ("server", "worker-1", "worker-2")}
    env = machine_env(database_url, bucket)
    settings = Settings(
        home=homes["server"],
        database_url=database_url,
        artifact_url=bucket.url,
        artifact_options=bucket.artifact_options,
        _env_file=None,
    )
    platform = Platform.open(settings)
    try:
        register_tiny_base(platform, tiny_base)
        base = platform.registry.resolve("tiny/1")
        _, editor = create_token(platform.engine, "editor", "editor", actor="test")
        server_env = {**env, "EVALHUB_RUN_WORKER": "false", "EVALHUB_MONITOR_INTERVAL": "0"}
        with child_server(homes["server"], server_env) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=editor, max_retries=0)
            train = write_jsonl(tmp_path / "train.jsonl", upper_case_task(64, seed=4))
            training_file = client.files.create(file=train, purpose="fine-tune").id
            job = create_job(client, training_file)

            # Worker 1 claims the job; worker 2 (another empty home) runs the same job, submitted
            # again, uninterrupted meanwhile.
            first = workers.start(homes["worker-1"])
            wait_for_event(platform, job.id, "started on")
            uninterrupted = create_job(client, training_file)
            workers.start(homes["worker-2"])
            # Worker 1 trains until it has reported a checkpoint, then dies without a word.
            wait_for_event(platform, job.id, f"Checkpoint saved at step {EVERY}:")
            first.send_signal(signal.SIGKILL)
            first.wait()
            killed = client.fine_tuning.jobs.retrieve(job.id)
            assert killed.status == "running", "worker 1 finished before it was killed"

            # Worker 2 takes the job over once its heartbeat is stale, and resumes it.
            whole = wait_for_job(client, uninterrupted.id)
            assert whole.status == "succeeded", f"{whole.error}\n{workers.output()}"
            resumed = wait_for_job(client, job.id)
            assert resumed.status == "succeeded", f"{resumed.error}\n{workers.output()}"
            listed = client.fine_tuning.jobs.list_events(job.id, limit=100)  # pages through all
            events = [event.message for event in listed]

            # The server's gateway serves it: a local backend for the base, on the server's home.
            backend = httpx.post(
                f"{server.url}/api/v1/backends",
                json={"name": "cpu", "kind": "local", "base": "tiny/1"},
                headers={"Authorization": f"Bearer {editor}"},
                timeout=120,
            )
            assert backend.status_code == 201, backend.text
            reply = client.chat.completions.create(
                model=resumed.fine_tuned_model,
                messages=[{"role": "user", "content": "upper: cat dog"}],
                max_tokens=8,
                temperature=0,
            )
        assert reply.model == resumed.fine_tuned_model and reply.choices[0].message.content

        resumed_from = [message for message in events if message.startswith("Resuming from")]
        assert len(resumed_from) == 1 and resumed_from[0].startswith(
            "Resuming from checkpoint step-"
        )
        assert "fetched from the artifact store (sha256:" in resumed_from[0]
        step = int(resumed_from[0].removeprefix("Resuming from checkpoint step-").split(",")[0])
        assert EVERY <= step < STEPS and step % EVERY == 0
        assert f"Resumed training at step {step} of {STEPS}" in events
        assert any(message.endswith("stopped responding; job requeued") for message in events)
        assert sum("started on" in message for message in events) == 2

        # Bit-identical to the uninterrupted run: same seed, CPU, one thread.
        assert registered_digest(platform, resumed.fine_tuned_model) == registered_digest(
            platform, whole.fine_tuned_model
        )
        # Each worker's home started empty: the base and the dataset came from the bucket.
        dataset = platform.registry.resolve_dataset("tiny-elsewhere-train/1")
        for home in (homes["worker-1"], homes["worker-2"]):
            checkout = home / "cache" / base.digest.removeprefix("sha256:")
            assert compute_tree(checkout).digest == base.digest
            assert (home / "cache" / "blobs" / dataset.digest.removeprefix("sha256:")).is_file()
            assert not (home / "evalhub.db").exists()
    finally:
        platform.close()
