"""Alert rules over known traffic in a real app on SQLite and PostgreSQL, delivered to a real
webhook receiver (an HTTP server on 127.0.0.1): a rule that fires is delivered once with a
signature the receiver verifies, a quiet rule sends nothing, a failing receiver is retried with
backoff and every attempt is logged, a budget on the day's cost fires, secrets are never shown,
and bad rules are refused without writing anything."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from evalhub.cli.main import app as cli_app
from evalhub.monitoring.alerts import AlertService, evaluate_alerts
from evalhub.platform import Platform
from monitors.alerts import verify
from registry.tables import utcnow
from tests.api.conftest import client, tokens  # noqa: F401  (fixtures)
from tests.monitoring.test_quality import add_deployment, add_traffic, error_of, known_traffic

API = "/api/v1"
SECRET = "whsec-4f1d9a0c-never-shown"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Answers each POST with the next of `statuses`, then 200; records every request."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            self.received.append(Received(dict(request.headers), body, time.monotonic()))
            return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

        return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(*statuses: int) -> Receiver:
        hook = Receiver(statuses=list(statuses))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(hook.app(), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the webhook receiver did not start"
            time.sleep(0.01)
        running.append((server, thread))
        hook.url = f"http://127.0.0.1:{port}/hook"
        return hook

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=5)


def rule(name: str, metric: str, comparison: str, threshold: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "metric": metric,
        "deployment": "bot",
        "comparison": comparison,
        "threshold": threshold,
        "window_seconds": 3600,
        **extra,
    }


def create_rule(client: TestClient, editor: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    response = client.post(f"{API}/alerts/rules", json=body, headers=editor)
    assert response.status_code == 201, response.text
    return response.json()


def count(platform: Platform, table: str) -> int:
    with platform.engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


@pytest.fixture
def bot(platform: Platform) -> dict[str, list[str]]:
    add_deployment(platform, "bot")
    return known_traffic(platform)


def test_a_rule_that_fires_is_delivered_once_signed_and_a_quiet_rule_sends_nothing(
    client: TestClient,  # noqa: F811
    tokens: dict[str, dict[str, str]],  # noqa: F811
    bot: dict[str, list[str]],
    receiver: Callable[..., Receiver],
) -> None:
    loud, quiet = receiver(), receiver()
    editor, viewer = tokens["editor"], tokens["viewer"]
    created = create_rule(
        client,
        editor,
        rule(
            "slow",
            "latency_p50",
            ">",
            100,
            severity="critical",
            webhook_url=loud.url,
            secret=SECRET,
        ),
    )
    assert created["has_secret"] is True and "secret" not in created
    # The error rate over both arms is 2 of 14 requests.
    create_rule(
        client, editor, rule("errors", "error_rate", ">", 0.5, webhook_url=quiet.url, secret=SECRET)
    )

    report = client.post(f"{API}/monitors/run", json={}, headers=editor)
    assert report.status_code == 200, report.text
    assert report.json()["alerts_fired"] == 1
    assert quiet.received == []
    (delivered,) = loud.received
    signature = delivered.headers["x-evalhub-signature"]
    assert signature.startswith("sha256=")
    assert verify(delivered.body, SECRET, signature)
    assert not verify(delivered.body, "another-secret", signature)
    assert not verify(delivered.body + b" ", SECRET, signature)
    assert delivered.headers["content-type"] == "application/json"
    payload = json.loads(delivered.body)
    assert payload["event"] == "alert.fired" and payload["rule"] == "slow"
    # The median of 50, 60, 70, 80, 100, 200, ..., 1000 ms.
    assert payload["value"] == pytest.approx(350.0) and payload["severity"] == "critical"
    assert payload["condition"] == "latency_p50 > 100.0"
    evidence = payload["evidence"]
    assert evidence["threshold"] == 100 and evidence["window_seconds"] == 3600
    assert evidence["numbers"]["requests"] == 14 and evidence["numbers"]["errors"] == 2
    assert set(evidence["window"]) == {"since", "until"}

    # The breach lasts, but its alert covers the rule's window: no storm.
    again = client.post(f"{API}/monitors/run", json={"deployment": "bot"}, headers=editor)
    assert again.json()["alerts_fired"] == 0
    assert len(loud.received) == 1
    metrics = client.get("/metrics").text
    assert 'evalhub_alerts_fired{arm="-",deployment="bot",severity="critical"} 1.0' in metrics

    page = client.get(f"{API}/alerts", params={"deployment": "bot"}, headers=viewer).json()
    (alert,) = page["data"]
    assert (alert["rule"], alert["delivery"], alert["delivered"]) == ("slow", "delivered", True)
    assert client.get(f"{API}/alerts", params={"rule": "errors"}, headers=viewer).json() == {
        "data": [],
        "next_page_token": None,
    }
    detail = client.get(f"{API}/alerts/{alert['id']}", headers=viewer).json()
    assert [(d["attempt"], d["status_code"], d["error"]) for d in detail["deliveries"]] == [
        (1, 200, None)
    ]
    assert detail["deliveries"][0]["url"] == loud.url
    audit = client.get(f"{API}/audit", params={"actor": "monitor"}, headers=tokens["admin"]).json()
    assert [(a["action"], a["resource"]) for a in audit["data"]] == [
        ("alert.fired", f"alerts/{alert['id']}")
    ]

    # The secret signs; it is never shown.
    for path in ("/alerts/rules", "/alerts", f"/alerts/{alert['id']}"):
        response = client.get(f"{API}{path}", headers=viewer)
        assert response.status_code == 200 and SECRET not in response.text, path
    rules = client.get(f"{API}/alerts/rules", headers=viewer).json()
    assert [(r["name"], r["has_secret"]) for r in rules] == [("slow", True), ("errors", True)]
    everything = client.get(f"{API}/audit", params={"limit": 1000}, headers=tokens["admin"])
    assert SECRET not in everything.text and SECRET.encode() not in delivered.body


def test_a_failing_receiver_is_retried_with_backoff_and_every_attempt_is_logged(
    client: TestClient,  # noqa: F811
    tokens: dict[str, dict[str, str]],  # noqa: F811
    platform: Platform,
    bot: dict[str, list[str]],
    receiver: Callable[..., Receiver],
) -> None:
    flaky, refusing = receiver(500, 500), receiver(404)
    unreachable = f"http://127.0.0.1:{free_port()}/hook"
    editor = tokens["editor"]
    create_rule(
        client, editor, rule("flaky", "error_rate", ">=", 0, webhook_url=flaky.url, secret=SECRET)
    )
    create_rule(client, editor, rule("gone", "error_rate", ">=", 0, webhook_url=refusing.url))
    create_rule(client, editor, rule("down", "error_rate", ">=", 0, webhook_url=unreachable))

    fired = {alert.rule: alert for alert in evaluate_alerts(platform)}
    assert {name: alert.delivery for name, alert in fired.items()} == {
        "flaky": "delivered",
        "gone": "failed",
        "down": "failed",
    }

    attempts = client.get(f"{API}/alerts/{fired['flaky'].id}", headers=editor).json()
    assert [(d["attempt"], d["status_code"]) for d in attempts["deliveries"]] == [
        (1, 500),
        (2, 500),
        (3, 200),
    ]
    assert attempts["deliveries"][0]["error"].startswith("HTTP 500")
    assert attempts["delivered"] is True
    assert len(flaky.received) == 3
    assert len({(r.body, r.headers["x-evalhub-signature"]) for r in flaky.received}) == 1
    assert all(verify(r.body, SECRET, r.headers["x-evalhub-signature"]) for r in flaky.received)
    waits = [later.at - earlier.at for earlier, later in itertools.pairwise(flaky.received)]
    assert waits[0] >= 0.45 and waits[1] >= 0.95, waits  # backoff: 0.5 s, then 1 s

    # A 4xx is the receiver's answer: not retried. Without a secret there is no signature.
    gone = client.get(f"{API}/alerts/{fired['gone'].id}", headers=editor).json()
    assert [(d["attempt"], d["status_code"]) for d in gone["deliveries"]] == [(1, 404)]
    assert "x-evalhub-signature" not in refusing.received[0].headers
    down = client.get(f"{API}/alerts/{fired['down'].id}", headers=editor).json()
    assert [(d["attempt"], d["status_code"]) for d in down["deliveries"]] == [
        (1, None),
        (2, None),
        (3, None),
    ]
    assert all("ConnectError" in d["error"] for d in down["deliveries"])
    assert count(platform, "alert_deliveries") == 7


def test_a_budget_on_the_day_s_cost_fires_once_that_day(
    client: TestClient,  # noqa: F811
    tokens: dict[str, dict[str, str]],  # noqa: F811
    platform: Platform,
    receiver: Callable[..., Receiver],
) -> None:
    add_deployment(platform, "bot")
    now = utcnow()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    today = max(midnight, now - timedelta(seconds=30))
    add_traffic(
        platform,
        [
            {
                "id": "yesterday",
                "deployment": "bot",
                "created_at": midnight - timedelta(hours=1),
                "cost": 5.0,
            },
            {"id": "today-1", "deployment": "bot", "created_at": today, "cost": 0.75},
            {"id": "today-2", "deployment": "bot", "created_at": today, "cost": 0.5},
        ],
    )
    hook = receiver()
    editor = tokens["editor"]
    create_rule(
        client,
        editor,
        rule(
            "budget",
            "cost_per_day",
            ">",
            1.0,
            webhook_url=hook.url,
            secret=SECRET,
            window_seconds=60,
        ),
    )
    create_rule(client, editor, rule("roomy", "cost_per_day", ">", 2.0))

    (alert,) = evaluate_alerts(platform)
    assert alert.rule == "budget" and alert.value == pytest.approx(1.25)
    numbers = alert.evidence["numbers"]
    assert numbers["day"] == midnight.date().isoformat() and numbers["requests"] == 2
    assert len(hook.received) == 1
    body = json.loads(hook.received[0].body)
    assert body["metric"] == "cost_per_day" and body["value"] == pytest.approx(1.25)
    # Past the rule's 60 s window, still the same day: a budget fires once a day.
    later = min(now + timedelta(minutes=5), midnight + timedelta(hours=23, minutes=59))
    assert AlertService(platform).evaluate(now=later) == []


def test_rules_on_online_metrics_feedback_and_silence_and_a_window_that_moves_on(
    client: TestClient,  # noqa: F811
    tokens: dict[str, dict[str, str]],  # noqa: F811
    platform: Platform,
    bot: dict[str, list[str]],
) -> None:
    editor = tokens["editor"]
    for body in (
        rule("format", "metric:json_valid", "<", 0.8),  # 0.75 on the scored requests
        rule("liked", "feedback:thumbs", ">=", 0.9),  # 0.5
        rule("silent", "requests", "<", 1, arm="ghost"),  # an arm with no traffic: 0 requests
        rule("ghost-errors", "error_rate", ">", 0, arm="ghost"),  # no traffic: no value
        rule("canary-slow", "latency_p95", ">", 100, arm="canary"),  # 78.5 ms
    ):
        create_rule(client, editor, body)
    fired = {alert.rule: alert for alert in evaluate_alerts(platform)}
    assert set(fired) == {"format", "silent"}
    assert fired["format"].value == pytest.approx(0.75) and fired["format"].delivery == "none"
    assert fired["silent"].value == 0

    # A rule is quiet while its last alert is within its window, and fires again after it.
    create_rule(client, editor, rule("busy", "requests", ">", 0, window_seconds=2))
    start = utcnow()
    add_traffic(platform, [{"id": "t0", "deployment": "bot", "created_at": start}])
    service = AlertService(platform)
    assert [a.rule for a in service.evaluate("bot", now=start + timedelta(seconds=1))] == ["busy"]
    assert service.evaluate("bot", now=start + timedelta(seconds=1.5)) == []
    add_traffic(
        platform, [{"id": "t1", "deployment": "bot", "created_at": start + timedelta(seconds=3)}]
    )
    assert [a.rule for a in service.evaluate("bot", now=start + timedelta(seconds=4))] == ["busy"]
    assert count(platform, "alerts") == 4

    # Deleting a rule keeps its alerts.
    assert client.delete(f"{API}/alerts/rules/busy", headers=editor).status_code == 204
    assert client.delete(f"{API}/alerts/rules/busy", headers=editor).status_code == 404
    listed = client.get(f"{API}/alerts", params={"rule": "busy", "limit": 1}, headers=editor)
    assert len(listed.json()["data"]) == 1 and listed.json()["next_page_token"]
    following = client.get(
        f"{API}/alerts",
        headers=editor,
        params={"rule": "busy", "page_token": listed.json()["next_page_token"]},
    )
    assert len(following.json()["data"]) == 1
    assert following.json()["data"][0]["id"] < listed.json()["data"][0]["id"]  # newest first


def test_bad_rules_are_refused_and_write_nothing(
    client: TestClient,  # noqa: F811
    tokens: dict[str, dict[str, str]],  # noqa: F811
    platform: Platform,
    bot: dict[str, list[str]],
) -> None:
    editor = tokens["editor"]
    create_rule(client, editor, rule("taken", "error_rate", ">", 0.1))
    rules, audit = count(platform, "alert_rules"), count(platform, "audit_log")
    for body, status, message in (
        (rule("r", "error_rate", ">", 0.1, deployment="nope"), 404, "deployment 'nope'"),
        (rule("r", "p42", ">", 1), 400, "unknown metric 'p42'"),
        (rule("r", "metric:bleu", ">", 1), 400, "unknown online metric 'bleu'"),
        (rule("r", "feedback:stars", ">", 1), 400, "unknown feedback 'stars'"),
        (
            rule("r", "error_rate", ">", 0.1, webhook_url="ftp://example.com/hook"),
            400,
            "http:// or https://",
        ),
        (rule("r", "error_rate", ">", 0.1, webhook_url="http://"), 400, "with a host"),
        (rule("Bad Name", "error_rate", ">", 0.1), 400, "invalid alert rule name"),
        (rule("taken", "error_rate", ">", 0.1), 409, "already exists"),
        (rule("r", "error_rate", "!=", 0.1), 422, "comparison"),
        (rule("r", "error_rate", ">", 0.1, severity="page-me"), 422, "severity"),
        (rule("r", "error_rate", ">", 0.1, window_seconds=0), 422, "window_seconds"),
        (rule("r", "error_rate", ">", 0.1, secret=""), 422, "secret"),
        (rule("r", "error_rate", ">", 0.1, extra=True), 422, "extra"),
    ):
        status_, message_ = error_of(client.post(f"{API}/alerts/rules", json=body, headers=editor))
        assert status_ == status and message in message_, (body, message_)
    infinite = client.post(
        f"{API}/alerts/rules",
        headers={**editor, "content-type": "application/json"},
        content=json.dumps(rule("r", "error_rate", ">", 0)).replace(": 0,", ": 1e999,"),
    )
    assert infinite.status_code == 422 and "finite" in infinite.text
    viewer = client.post(
        f"{API}/alerts/rules", json=rule("r", "error_rate", ">", 0.1), headers=tokens["viewer"]
    )
    assert viewer.status_code == 403
    assert client.get(f"{API}/alerts/12345", headers=editor).status_code == 404
    assert client.delete(f"{API}/alerts/rules/nope", headers=editor).status_code == 404
    assert (count(platform, "alert_rules"), count(platform, "audit_log")) == (rules, audit)


def test_the_cli_creates_a_rule_and_lists_what_fired(
    platform: Platform,
    bot: dict[str, list[str]],
    receiver: Callable[..., Receiver],
    cli_env: dict[str, str],
) -> None:
    hook = receiver()
    env = {**cli_env, "EVALHUB_WEBHOOK_SECRET": SECRET}
    runner = CliRunner()

    def cli(*args: str, code: int = 0) -> str:
        done = runner.invoke(cli_app, list(args), env=env)
        assert done.exit_code == code, done.output
        return done.output

    out = cli(
        "monitor",
        "alert-rule",
        "busy",
        "--metric",
        "requests",
        "--deployment",
        "bot",
        "--above",
        "10",
        "--window",
        "3600",
        "--webhook",
        hook.url,
    )
    assert "rule busy: requests > 10 on bot over 3600 s (warning), to" in out and "signed" in out
    assert SECRET not in cli("monitor", "alert-rules", "--json")
    assert "exactly one of --above X or --below X" in cli(
        "monitor", "alert-rule", "x", "--metric", "requests", "--deployment", "bot", code=1
    )
    assert "unknown metric 'p42'" in cli(
        "monitor",
        "alert-rule",
        "x",
        "--metric",
        "p42",
        "--deployment",
        "bot",
        "--below",
        "1",
        code=1,
    )
    assert json.loads(cli("monitor", "run", "--json"))["alerts_fired"] == 1
    assert verify(hook.received[0].body, SECRET, hook.received[0].headers["x-evalhub-signature"])
    listed = next(line for line in cli("monitor", "alerts").splitlines() if "busy" in line)
    assert "requests > 10.0" in listed and "14" in listed and "delivered" in listed
