"""The rollout controller through the real gateway on a real local backend: a canary whose
answers break the deployment's JSON format is rolled back by itself, and a good one is promoted
step by step until `@production` moves to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from evalhub.finetune.tasks import json_task
from tests.monitoring.conftest import Served

# One worker builds this module's server (a module fixture), under --dist loadgroup.
pytestmark = pytest.mark.xdist_group("monitoring-rollout")

PROMPTS = [row["messages"][0]["content"] for row in json_task(200, seed=5, split="held_out")]

ANALYSIS = {
    "guards": [
        {"name": "json_valid", "margin": 0.1},
        {"name": "error_rate", "margin": 0.05},
    ],
    "min_requests": 25,
    "max_wait_seconds": 600,
}


def parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def send(served: Served, deployment: str, n: int, start: int = 0) -> list[httpx.Response]:
    """`n` chat requests from `n` different users (sticky arms split them by weight)."""
    headers = {"Authorization": f"Bearer {served.token}"}
    replies = []
    with httpx.Client(base_url=served.url, headers=headers, timeout=120) as http:
        for i in range(start, start + n):
            body = {
                "model": deployment,
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": 48,
                "temperature": 0,
                "user": f"user-{i}",
            }
            reply = http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            replies.append(reply)
    return replies


def create(served: Served, name: str, candidate: str) -> None:
    served.api.post(
        "/deployments",
        {
            "name": name,
            "backend": "cpu",
            "arms": [
                {"name": "control", "model": "bot@production", "weight": 100},
                {"name": "canary", "model": candidate, "weight": 0},
            ],
        },
    )


def loaded(served: Served) -> list[str]:
    return list(served.api.get("/backends/cpu")["options"]["loaded_adapters"])


def weights(deployment: dict[str, Any]) -> dict[str, float]:
    return {arm["name"]: arm["weight"] for arm in deployment["arms"]}


def monitor_run(served: Served, deployment: str) -> dict[str, Any]:
    """`evalhub monitor run --json`, as cron would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "evalhub", "monitor", "run", "--deployment", deployment, "--json"],
        env={**os.environ, **served.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_canary_that_breaks_json_is_rolled_back_by_itself(served: Served) -> None:
    create(served, "bad", "bot/2")
    with_drift = {**ANALYSIS, "guards": [*ANALYSIS["guards"], {"name": "drift"}]}
    served.api.post(
        "/deployments/bad/rollout", {"action": "start", "steps": [50, 100], "analysis": with_drift}
    )
    sent, canary_requests, decision = 0, 0, None
    while decision is None or decision["action"] == "hold":
        replies = send(served, "bad", 20, start=sent)
        sent += len(replies)
        canary_requests += sum(r.headers["x-evalhub-arm"] == "canary" for r in replies)
        assert canary_requests <= 120, "no rollback after 120 canary requests"
        (decision,) = monitor_run(served, "bad")["decisions"]
    assert decision["action"] == "rollback", decision
    assert "json_valid" in decision["reason"]
    json_valid = next(m for m in decision["metrics"] if m["name"] == "json_valid")
    assert json_valid["verdict"] == "worse" and json_valid["high"] < -0.1
    assert decision["candidate_version"] == "bot/2" and decision["control_version"] == "bot/1"
    drift = next(m for m in decision["metrics"] if m["name"] == "drift")
    assert drift["verdict"] == "worse"  # its answers look nothing like the control's
    print(f"rolled back after {canary_requests} canary requests: {decision['reason']}")

    deployment = served.api.get("/deployments/bad")
    assert weights(deployment) == {"control": 100, "canary": 0}
    assert deployment["rollout"]["status"] == "rolled_back"
    after = send(served, "bad", 10, start=sent)
    assert {r.headers["x-evalhub-arm"] for r in after} == {"control"}
    # The control's answers again: JSON (a tiny model trained for seconds: one miss in ten allowed).
    assert sum(parses(r.json()["choices"][0]["message"]["content"]) for r in after) >= 9

    # The rolled-back candidate's adapter is unloaded once idle (2 s in these tests).
    deadline = time.monotonic() + 30
    while any(name.startswith("bot-v2-") for name in loaded(served)):
        assert time.monotonic() < deadline, loaded(served)
        time.sleep(0.5)

    scraped = httpx.get(f"{served.url}/metrics").text
    assert (
        'evalhub_online_metric_mean{arm="canary",deployment="bad",metric="json_valid"}' in scraped
    )

    stored = served.api.get("/deployments/bad/decisions")["data"]
    assert stored[0]["id"] == decision["id"] and stored[0]["action"] == "rollback"
    audit = served.api.get("/audit", actor="rollout-controller")["data"]
    actions = [(a["action"], a["resource"]) for a in audit]
    assert ("deployment.rollback", "deployments/bad") in actions
    assert ("rollout.decision.rollback", f"deployments/bad/decisions/{decision['id']}") in actions


def test_a_good_canary_is_promoted_step_by_step_and_production_moves(served: Served) -> None:
    create(served, "good", "bot/3")
    served.api.post(
        "/deployments/good/rollout",
        {"action": "start", "steps": [25, 50, 100], "analysis": ANALYSIS},
    )
    seen_weights, sent = [], 0
    for _ in range(30):
        deployment = served.api.get("/deployments/good")
        if deployment["rollout"]["status"] != "running":
            break
        seen_weights.append(weights(deployment)["canary"])
        sent += len(send(served, "good", 20, start=sent))
        report = served.api.post("/monitors/run", {"deployment": "good"})
        (decision,) = report["decisions"]
        assert decision["action"] in ("hold", "promote"), decision
    assert deployment["rollout"]["status"] == "completed", deployment["rollout"]
    assert weights(deployment) == {"control": 0, "canary": 100}
    assert sorted(set(seen_weights)) == [25, 50]
    production = served.api.get("/models/bot/aliases/production")
    assert production["version"] == 3
    history = served.api.get("/models/bot/aliases/production/history")["data"]
    assert "rollout of good completed" in history[-1]["reason"]  # oldest first
    assert history[-1]["actor"] == "rollout-controller"
    promotions = [
        d for d in served.api.get("/deployments/good/decisions")["data"] if d["action"] == "promote"
    ]
    assert [d["weight"] for d in promotions] == [50, 25]  # newest first
    assert all("confidence sequence" in d["method"] for d in promotions)


def test_an_analysis_that_cannot_be_measured_is_refused(served: Served) -> None:
    create(served, "refused", "bot/3")
    for analysis, message in (
        ({"guards": [{"name": "exact_match"}]}, "cannot score live traffic"),
        ({"guards": [{"name": "json_schema", "options": {"schema": 3}}]}, "json_schema"),
        ({"guards": []}, "at least 1"),
    ):
        with pytest.raises(Exception, match=message):
            served.api.post(
                "/deployments/refused/rollout",
                {"action": "start", "steps": [50, 100], "analysis": analysis},
            )
    with pytest.raises(Exception, match="ends at 100"):
        served.api.post(
            "/deployments/refused/rollout",
            {"action": "start", "steps": [10, 50], "analysis": ANALYSIS},
        )
    assert served.api.get("/deployments/refused")["rollout"] is None
