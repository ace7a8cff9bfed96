"""Eval runs with executor "ray": a real `evalhub serve` whose worker runs the suite's cases as Ray
tasks on a real Ray head on 127.0.0.1 (tests/ray_cluster.py), against the scripted
OpenAI-compatible server standing for a served model.

The run on Ray equals the same run done locally, case by case and in its aggregates; its events
show each batch and the Ray worker that ran it; a cancelled run stops its tasks; an unknown
executor is refused at submission, by the API and the CLI, and nothing is created.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from evalhub.child_server import child_server
from evalhub.platform import Platform
from evalhub.settings import Settings
from tests.eval.scripted_capitals import N_CASES, SUITE, request_body, scripted_capitals
from tests.ray_cluster import RayHead
from tests.scripted_server import ScriptedServer

pytestmark = pytest.mark.xdist_group("ray")

MEASURED = {"latency"}  # wall time: no two runs share it


@dataclass
class Served:
    api: httpx.Client
    env: dict[str, str]
    home: Path
    pid: int
    scripted: ScriptedServer


@pytest.fixture
def served(ray_head: RayHead, tmp_path: Path, start_scripted_server) -> Iterator[Served]:
    scripted = start_scripted_server(ScriptedServer(scripted_capitals))
    home = tmp_path / "home"
    with child_server(home, {"EVALHUB_RAY_ADDRESS": ray_head.address}) as child:
        headers = {"Authorization": f"Bearer {child.token}"}
        with httpx.Client(base_url=f"{child.url}/api/v1", headers=headers, timeout=30) as api:
            env = {**child.env, "EVALHUB_URL": child.url, "EVALHUB_TOKEN": child.token or ""}
            yield Served(api, env, home, child.process.pid, scripted)


def start(served: Served, **fields: Any) -> str:
    body = request_body("base-model", served.scripted.base_url, no_cache=True) | fields
    response = served.api.post("/evals", json=body)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run"]["id"]
    return run_id


def wait_finished(served: Served, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info: dict[str, Any] = served.api.get(f"/evals/{run_id}").json()
        if info["status"] in ("completed", "failed"):
            return info
        time.sleep(0.2)
    raise AssertionError(f"eval run {run_id} did not finish")


def comparable(run: dict[str, Any]) -> dict[str, Any]:
    """What a run measured of the answers: every score but the measured latency."""
    return {
        "cases": {
            result["case_id"]: {k: v for k, v in result["scores"].items() if k not in MEASURED}
            for result in run["results"]
        },
        "metrics": {k: v for k, v in run["metrics"].items() if k not in MEASURED},
        "slices": {
            name: {k: v for k, v in summary["metrics"].items() if k not in MEASURED}
            for name, summary in run["slices"].items()
        },
        "overall": (run["overall_score"], run["passed"]),
    }


def test_a_ray_eval_run_equals_the_local_run_and_reports_its_batches(
    served: Served, ray_head: RayHead
) -> None:
    on_ray = start(served, executor="ray", batch_size=5)
    local = start(served)
    assert wait_finished(served, on_ray)["status"] == "completed"
    assert wait_finished(served, local)["status"] == "completed"

    runs = [served.api.get(f"/evals/{run_id}/run").json() for run_id in (on_ray, local)]
    assert [len(run["results"]) for run in runs] == [N_CASES, N_CASES]
    assert runs[0]["metrics"]["exact_match"]["aggregate"]["value"] == pytest.approx(14 / 16)
    assert comparable(runs[0]) == comparable(runs[1])
    assert [r["case_id"] for r in runs[0]["results"]] == [r["case_id"] for r in runs[1]["results"]]
    assert served.scripted.calls == 2 * N_CASES

    events = served.api.get(f"/evals/{on_ray}/events").json()
    messages = [event["message"] for event in events]
    assert (
        f"Running {N_CASES} cases as 4 Ray tasks of up to 5 on the Ray cluster at "
        f"{ray_head.address}" in messages
    )
    batches = [event["data"] for event in events if event["message"].startswith("batch ")]
    assert sorted(batch["batch"] for batch in batches) == [1, 2, 3, 4]
    assert {batch["node_ip"] for batch in batches} == {ray_head.node_ip}
    assert served.pid not in {batch["pid"] for batch in batches}  # Ray workers generated
    assert (
        messages[-2].startswith("run completed: exact_match=0.875") and messages[-1] == "succeeded"
    )
    local_events = served.api.get(f"/evals/{local}/events").json()
    assert not any(event["message"].startswith("batch ") for event in local_events)


def test_cancelling_a_ray_eval_run_cancels_its_tasks(served: Served) -> None:
    served.scripted.delay_s = 1.0  # each batch of 8 takes about 8 s, one answer at a time
    run_id = start(
        served, executor="ray", batch_size=8, options={"no_cache": True, "concurrency": 1}
    )
    deadline = time.monotonic() + 60
    while served.scripted.calls == 0:
        assert time.monotonic() < deadline, "no Ray task started generating"
        time.sleep(0.2)
    platform = Platform.open(Settings(home=served.home, _env_file=None))
    try:
        job_id = served.api.get(f"/evals/{run_id}").json()["job_id"]
        platform.jobs.cancel(job_id, actor="test")
        info = wait_finished(served, run_id)
        assert info["status"] == "failed" and info["error"] == "cancelled"
        assert platform.jobs.get(job_id).status.value == "cancelled"
    finally:
        platform.close()
    stopped_at = served.scripted.calls
    assert stopped_at < N_CASES
    # Two running tasks would ask for about 6 more answers in these 3 s; killed, they ask none.
    time.sleep(3)
    assert served.scripted.calls == stopped_at


def test_an_executor_other_than_local_or_ray_is_refused(served: Served) -> None:
    before = served.api.get("/evals").json()
    refused = served.api.post("/evals", json=request_body("base-model", "http://x") | {
        "executor": "spark"
    })  # fmt: skip
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "executor 'spark': use 'local' or 'ray'"
    cli = subprocess.run(
        [sys.executable, "-m", "evalhub", "eval", "run", str(SUITE), "--model", "tiny",
         "--executor", "spark"],
        env=served.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 1 and "executor 'spark': use 'local' or 'ray'" in cli.stderr
    assert served.api.get("/evals").json() == before
