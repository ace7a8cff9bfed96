"""Fine-tuning jobs with executor "ray": a real Ray head on 127.0.0.1 with 2 CPUs (tests/ray_cluster.py)
and a real `evalhub serve` whose worker sends such jobs to it (EVALHUB_RAY_ADDRESS).

A job on two Ray Train workers trains in their processes, reports back through its events and
checkpoints, and ends with the weights one local process trains; a cancelled job stops its Ray
run. The README's "A Ray cluster" section, which the docs test runs, shows a job on one worker
reproduced bit for bit by the local executor and the errors of a worker without a cluster.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from evalhub.auth.tokens import create_token
from evalhub.child_server import child_server
from evalhub.finetune.tasks import upper_case_task, write_jsonl
from evalhub.platform import Platform
from evalhub.settings import Settings
from tests.finetune.conftest import register_tiny_base
from tests.ray_cluster import RayHead

# One worker starts the Ray head (shared with tests/eval/test_ray.py) and this module's server.
pytestmark = pytest.mark.xdist_group("ray")

FINISHED = {"succeeded", "failed", "cancelled"}


@dataclass
class Served:
    url: str
    token: str
    settings: Settings
    server_pid: int

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.token, max_retries=0)


@pytest.fixture(scope="module")
def served(
    ray_head: RayHead, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`evalhub serve` (its in-process worker) on SQLite with EVALHUB_RAY_ADDRESS set."""
    settings = Settings(home=tmp_path_factory.mktemp("ray-served") / "home", _env_file=None)
    platform = Platform.open(settings)
    register_tiny_base(platform, tiny_base)
    token = create_token(platform.engine, "editor-token", "editor", actor="test")[1]
    platform.close()
    # HOME: Ray Train keeps a marker per run under ~/ray_results (its default storage).
    env = {"EVALHUB_RAY_ADDRESS": ray_head.address, "HOME": str(settings.home.parent)}
    with child_server(settings.home, env) as child:
        yield Served(child.url, token, settings, child.process.pid)


def wait_for(client: openai.OpenAI, job_id: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in FINISHED:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


def create(client: openai.OpenAI, training_file: str, suffix: str, **evalhub: Any) -> Any:
    return client.fine_tuning.jobs.create(
        model="tiny",
        training_file=training_file,
        suffix=suffix,
        seed=5,
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}},
        extra_body={"evalhub": {"method": "lora", "rank": 8, "learning_rate": 3e-3, **evalhub}},
    )


def events_of(client: openai.OpenAI, job_id: str) -> list[Any]:
    """Oldest first."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def test_a_ray_job_on_two_workers_trains_as_one_process_does(
    served: Served, ray_head: RayHead, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    client = served.client()
    train = write_jsonl(tmp_path / "train.jsonl", upper_case_task(48, seed=2))
    training_file = client.files.create(file=train, purpose="fine-tune").id
    options = {"max_steps": 4, "checkpoint_every": 2, "dropout": 0.0}
    two = create(
        client, training_file, "ontwo", executor="ray", distributed={"nproc_per_node": 2}, **options
    )
    one = create(client, training_file, "onone", **options)
    assert two.evalhub["executor"] == "ray" and one.evalhub["executor"] == "local"
    two, one = wait_for(client, two.id), wait_for(client, one.id)
    assert two.status == "succeeded", two.error
    assert one.status == "succeeded", one.error

    events = events_of(client, two.id)
    messages = [event.message for event in events]
    assert (
        f"Running on the Ray cluster at {ray_head.address}: Ray Train TorchTrainer, 2 CPU workers"
        in messages
    )
    (worker,) = [e.data for e in events if e.message.startswith("Ray Train worker")]
    assert worker["world_size"] == 2 and worker["node_ip"] == ray_head.node_ip  # rank 0 reports
    assert worker["pid"] != served.server_pid  # the steps ran in the Ray worker's process
    assert [event.data["step"] for event in events if event.type == "metrics"] == [1, 2, 3, 4]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(two.id).data
    assert [checkpoint.step_number for checkpoint in checkpoints] == [4, 2]
    checkpoint_dir = served.settings.home / "jobs" / two.id / "checkpoints" / "step-2"
    assert (checkpoint_dir / "trainer_state.pt").is_file()  # a requeued job resumes from it

    platform = Platform.open(served.settings)
    try:
        versions = [platform.registry.resolve_fine_tuned(j.fine_tuned_model) for j in (two, one)]
        assert versions[0].ref == "tiny-ontwo/1" and versions[0].training_job == two.id
        assert versions[0].kind.value == "adapter" and versions[0].base == "tiny/1"
        assert versions[0].hyperparameters["environment"]["ranks"] == 2
        weights = [
            load_file(platform.registry.model_path(v.ref) / "adapter_model.safetensors")
            for v in versions
        ]
    finally:
        platform.close()
    # The two workers split each global batch and average their gradients: one process's weights.
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], rtol=1e-4, atol=1e-5), name


def test_cancelling_a_ray_job_stops_its_ray_run(served: Served, tmp_path: Path) -> None:
    client = served.client()
    train = write_jsonl(tmp_path / "train.jsonl", upper_case_task(48, seed=2))
    training_file = client.files.create(file=train, purpose="fine-tune").id
    job = create(client, training_file, "cancelled", executor="ray", max_steps=100_000)
    deadline = time.monotonic() + 300
    while not any(event.type == "metrics" for event in events_of(client, job.id)):
        assert time.monotonic() < deadline, "the Ray run never started training"
        time.sleep(0.5)
    (worker,) = [
        event.data
        for event in events_of(client, job.id)
        if event.message.startswith("Ray Train worker")
    ]
    assert client.fine_tuning.jobs.cancel(job.id).status == "running"  # asked to stop
    job = wait_for(client, job.id, timeout=120)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    deadline = time.monotonic() + 60
    while process_exists(worker["pid"]):  # the Ray Train worker's process ends with its run
        assert time.monotonic() < deadline, f"the Ray worker {worker['pid']} still runs"
        time.sleep(0.5)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_executor_other_than_local_or_ray_is_refused(served: Served, tmp_path: Path) -> None:
    client = served.client()
    train = write_jsonl(tmp_path / "train.jsonl", upper_case_task(12, seed=3))
    training_file = client.files.create(file=train, purpose="fine-tune").id
    before = [job.id for job in client.fine_tuning.jobs.list(limit=100)]
    with pytest.raises(openai.BadRequestError) as refused:
        create(client, training_file, "spark", executor="spark")
    assert refused.value.body["param"] == "evalhub.executor"
    assert "'local' or 'ray'" in refused.value.body["message"]
    assert [job.id for job in client.fine_tuning.jobs.list(limit=100)] == before


def test_an_experiment_with_executor_ray_in_fixed_runs_each_trial_on_ray() -> None:
    from evalhub.iteration.experiments import ExperimentSpec, trial_request

    spec = ExperimentSpec.model_validate(
        {
            "name": "sweep",
            "base": "tiny",
            "dataset": "upper/1",
            "suite": "name: s",
            "metric": "exact_match",
            "space": {"rank": [4, 8]},
            "fixed": {"executor": "ray", "max_steps": 4},
        }
    )
    assert [trial_request(spec, {"rank": rank}, 0).evalhub.executor for rank in (4, 8)] == [
        "ray",
        "ray",
    ]
