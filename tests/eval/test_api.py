"""The evals REST API through TestClient on SQLite and PostgreSQL, with a job worker running and
a scripted OpenAI-compatible server on 127.0.0.1 as the target."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from evalhub.api.app import create_app
from evalhub.auth.tokens import create_token
from evalhub.eval.service import eval_handler
from evalhub.jobs.worker import Worker
from evalhub.platform import Platform
from tests.eval.scripted_capitals import N_CASES, SUITE, request_body, scripted_capitals
from tests.scripted_server import ScriptedServer

API = "/api/v1"


@pytest.fixture
def api(platform: Platform) -> Iterator[TestClient]:
    worker = Worker(platform.jobs, {"eval": eval_handler(platform)}, poll_seconds=0.05).start()
    with TestClient(create_app(platform=platform)) as client:
        yield client
    worker.stop()


@pytest.fixture
def headers(platform: Platform) -> dict[str, dict[str, str]]:
    tokens = {}
    for role in ("viewer", "editor"):
        _, secret = create_token(platform.engine, f"{role}-token", role, actor="test")
        tokens[role] = {"Authorization": f"Bearer {secret}"}
    return tokens


def wait_finished(api: TestClient, run_id: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = api.get(f"{API}/evals/{run_id}", headers=headers).json()
        if info["status"] in ("completed", "failed"):
            return info
        time.sleep(0.05)
    raise AssertionError(f"eval run {run_id} did not finish")


def error_of(response) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    body = response.json()
    assert set(body) == {"error"}, body
    return response.status_code, body["error"]["message"]


def test_start_follow_read_and_compare_runs(
    api: TestClient, headers, start_scripted_server
) -> None:
    scripted = start_scripted_server(ScriptedServer(scripted_capitals))
    editor, viewer = headers["editor"], headers["viewer"]
    ids = {}
    for model in ("base-model", "good-model"):
        started = api.post(
            f"{API}/evals", headers=editor, json=request_body(model, scripted.base_url)
        )
        assert started.status_code == 202, started.text
        body = started.json()
        assert body["job_id"].startswith("eval-") and body["run"]["id"].startswith("evalrun-")
        ids[model] = body["run"]["id"]
        info = wait_finished(api, ids[model], viewer)
        assert info["status"] == "completed", info["error"]
    assert scripted.calls == 2 * N_CASES
    assert info["metrics"]["exact_match"]["value"] == 1.0
    assert info["suite_name"] == "capitals" and info["dataset_ref"] == "capitals.jsonl"

    page = api.get(f"{API}/evals/{ids['good-model']}/cases", headers=viewer, params={"limit": 6})
    assert page.status_code == 200 and len(page.json()["data"]) == 6
    assert page.json()["next_page_token"]
    case = page.json()["data"][0]
    assert set(case["scores"]) == {"exact_match", "contains", "chrf", "latency"}

    # The run's row says completed as its results are stored; the job ends just after.
    deadline = time.monotonic() + 30
    while True:
        events = api.get(f"{API}/evals/{ids['good-model']}/events", headers=viewer).json()
        if events[-1]["message"].startswith("succeeded") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert any((event["data"] or {}).get("done") == N_CASES for event in events)
    assert events[-1]["message"].startswith("succeeded"), events[-3:]

    compared = api.get(
        f"{API}/evals/compare",
        headers=viewer,
        params={"baseline": ids["base-model"], "candidate": ids["good-model"]},
    )
    assert compared.status_code == 200, compared.text
    exact = compared.json()["metrics"]["exact_match"]
    assert (exact["wins"], exact["losses"]) == (2, 0) and exact["test"] == "mcnemar"

    run = api.get(f"{API}/evals/{ids['good-model']}/run", headers=viewer).json()
    assert len(run["results"]) == N_CASES and run["metrics"]["exact_match"]["aggregate"]["value"]
    listed = api.get(f"{API}/evals", headers=viewer, params={"limit": 1}).json()
    assert [r["id"] for r in listed["data"]] == [ids["good-model"]] and listed["next_page_token"]

    again = api.post(
        f"{API}/evals", headers=editor, json=request_body("good-model", scripted.base_url)
    )
    assert wait_finished(api, again.json()["run"]["id"], viewer)["status"] == "completed"
    assert scripted.calls == 2 * N_CASES, "a second run of the same target generated again"


def test_roles_and_bad_requests_change_nothing(api: TestClient, headers, platform) -> None:
    editor, viewer = headers["editor"], headers["viewer"]
    body = request_body("m", "http://127.0.0.1:9/v1")
    assert error_of(api.post(f"{API}/evals", json=body))[0] == 401
    status, message = error_of(api.post(f"{API}/evals", headers=viewer, json=body))
    assert status == 403 and "editor" in message

    bad_suite = SUITE.read_text().replace("  - name: contains\n", "  - name: containz\n")
    status, message = error_of(
        api.post(f"{API}/evals", headers=editor, json={**body, "suite": bad_suite})
    )
    assert status == 400
    assert "capitals.yaml:18: metrics.1: unknown metric 'containz'" in message, message
    assert "exact_match" in message  # the known metrics are listed

    broken = SUITE.read_text().replace("sampling: {", "sampling: [{")
    status, message = error_of(
        api.post(f"{API}/evals", headers=editor, json={**body, "suite": broken})
    )
    assert status == 400 and "capitals.yaml:13" in message and "bad YAML" in message

    lines = body["dataset"].splitlines()
    lines[2] = '{"id": "it", "input": '
    status, message = error_of(
        api.post(f"{API}/evals", headers=editor, json={**body, "dataset": "\n".join(lines)})
    )
    assert status == 400 and "capitals.jsonl:3: bad JSON" in message

    escaping = SUITE.read_text().replace("dataset: capitals.jsonl", "dataset: ../../etc/x.jsonl")
    status, message = error_of(
        api.post(f"{API}/evals", headers=editor, json={**body, "suite": escaping})
    )
    assert status == 400 and "outside the suite's directory" in message

    judged = SUITE.read_text().replace(
        "  - name: latency\n",
        "  - name: latency\n  - {name: llm_judge, options: {model: j, api_key: sk-x}}\n",
    )
    status, message = error_of(
        api.post(f"{API}/evals", headers=editor, json={**body, "suite": judged})
    )
    assert status == 400 and "never from a request" in message and "sk-x" not in message

    status, message = error_of(
        api.post(f"{API}/evals", headers=editor, json={**body, "target": {"model": "nope"}})
    )
    assert status == 404 and "nope" in message

    assert api.get(f"{API}/evals", headers=viewer).json()["data"] == []
    assert platform.jobs.search(kind="eval").data == []
    assert error_of(api.get(f"{API}/evals/evalrun-missing", headers=viewer))[0] == 404
