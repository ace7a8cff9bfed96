"""Quality and cost of a deployment over a window of known traffic, on SQLite and PostgreSQL: the
numbers a user checks (error rate, latency percentiles, online metric means, feedback rate, cost
per UTC day) through the REST API and `evalhub monitor quality|cost`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session
from typer.testing import CliRunner

from evalhub.cli.main import app as cli_app
from evalhub.monitoring.tables import FeedbackRow, OnlineScoreRow
from evalhub.platform import Platform
from evalhub.serving.tables import DeploymentRow, TrafficRow
from registry.tables import utcnow
from tests.api.conftest import client, tokens  # noqa: F401  (fixtures)

API = "/api/v1"
DAY = datetime(2026, 3, 14, tzinfo=UTC)


def add_deployment(platform: Platform, name: str) -> None:
    """A deployment row as `POST /deployments` stores it (no backend needed to read its log)."""
    with Session(platform.engine) as session:
        session.add(
            DeploymentRow(
                name=name,
                backend="cpu",
                arms=[
                    {"name": "control", "model": "bot/1", "weight": 80},
                    {"name": "canary", "model": "bot/2", "weight": 20},
                ],
            )
        )
        session.commit()


def add_traffic(platform: Platform, records: Sequence[dict[str, Any]]) -> list[str]:
    """Traffic records as the gateway writes them; returns their request ids."""
    rows = []
    for record in records:
        fields = {
            "model": record.get("deployment", "bot"),
            "endpoint": "chat.completions",
            "status": 200,
            "latency_ms": 100.0,
            "created_at": utcnow() - timedelta(minutes=1),
            **record,
        }
        rows.append(TrafficRow(**fields))
    ids = [row.id for row in rows]
    with Session(platform.engine) as session:
        session.add_all(rows)
        session.commit()
    return ids


def known_traffic(platform: Platform, deployment: str = "bot") -> dict[str, list[str]]:
    """control (bot/1): 10 requests at 100..1000 ms, 2 of them failed, each costing 0.001;
    4 json_valid scores (3 pass) and thumbs on 2. canary (bot/2): 4 requests at 50..80 ms."""
    now = utcnow()
    control = add_traffic(
        platform,
        [
            {
                "id": f"{deployment}-c{i}",
                "deployment": deployment,
                "arm": "control",
                "version": "bot/1",
                "status": 500 if i in (3, 7) else 200,
                "error": "backend failed" if i in (3, 7) else None,
                "latency_ms": 100.0 * (i + 1),
                "ttft_ms": 10.0 * (i + 1),
                "prompt_tokens": 20,
                "completion_tokens": 10,
                "cost": 0.001,
                "created_at": now - timedelta(minutes=30 - i),
            }
            for i in range(10)
        ],
    )
    canary = add_traffic(
        platform,
        [
            {
                "id": f"{deployment}-k{i}",
                "deployment": deployment,
                "arm": "canary",
                "version": "bot/2",
                "latency_ms": 50.0 + 10 * i,
                "prompt_tokens": 20,
                "completion_tokens": 30,
                "cost": 0.002,
                "created_at": now - timedelta(minutes=20 - i),
            }
            for i in range(4)
        ],
    )
    with Session(platform.engine) as session:
        for request_id, score in zip(control[:4], [1.0, 1.0, 0.0, 1.0], strict=True):
            session.add(
                OnlineScoreRow(
                    request_id=request_id,
                    metric="json_valid",
                    score=score,
                    deployment=deployment,
                    arm="control",
                    version="bot/1",
                )
            )
        for request_id, score in zip(control[:2], [1.0, 0.0], strict=True):
            session.add(
                FeedbackRow(
                    request_id=request_id,
                    name="thumbs",
                    score=score,
                    deployment=deployment,
                    arm="control",
                    version="bot/1",
                )
            )
        session.commit()
    return {"control": control, "canary": canary}


def error_of(response: Any) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    return response.status_code, body["error"]["message"]


@pytest.fixture
def bot(platform: Platform) -> dict[str, list[str]]:
    add_deployment(platform, "bot")
    return known_traffic(platform)


def test_quality_per_arm_and_version_gives_the_numbers_of_the_traffic(
    client: TestClient,  # noqa: F811
    tokens: dict[str, dict[str, str]],  # noqa: F811
    bot: dict[str, list[str]],
) -> None:
    response = client.get(
        f"{API}/monitors/quality", params={"deployment": "bot"}, headers=tokens["viewer"]
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["deployment"] == "bot" and report["bucket"] is None
    since = datetime.fromisoformat(report["since"])
    until = datetime.fromisoformat(report["until"])
    assert until - since == timedelta(hours=24)  # the default window
    by_arm = {row["arm"]: row for row in report["rows"]}
    assert set(by_arm) == {"control", "canary"}

    control = by_arm["control"]
    assert control["version"] == "bot/1"
    assert (control["requests"], control["errors"]) == (10, 2)
    assert control["error_rate"] == pytest.approx(0.2)
    assert control["latency_p50_ms"] == pytest.approx(550.0)
    assert control["latency_p95_ms"] == pytest.approx(955.0)  # 900 + 0.55 * 100
    assert control["ttft_p50_ms"] == pytest.approx(55.0)
    assert control["cost"] == pytest.approx(0.01)
    assert control["metrics"] == {"json_valid": {"mean": 0.75, "count": 4}}
    assert control["feedback_requests"] == 2 and control["feedback_rate"] == pytest.approx(0.2)
    assert control["feedback"] == {"thumbs": {"mean": 0.5, "count": 2}}

    canary = by_arm["canary"]
    assert (canary["version"], canary["requests"], canary["errors"]) == ("bot/2", 4, 0)
    assert canary["latency_p50_ms"] == pytest.approx(65.0)
    assert canary["ttft_p50_ms"] is None  # no streamed answers
    assert canary["metrics"] == {} and canary["feedback_rate"] == 0
    assert canary["completion_tokens"] == 120 and canary["cost"] == pytest.approx(0.008)

    only = client.get(
        f"{API}/monitors/quality",
        params={"deployment": "bot", "arm": "canary"},
        headers=tokens["viewer"],
    ).json()
    assert [row["arm"] for row in only["rows"]] == ["canary"]
    by_version = client.get(
        f"{API}/monitors/quality",
        params={"deployment": "bot", "version": "bot/1"},
        headers=tokens["viewer"],
    ).json()
    assert [row["requests"] for row in by_version["rows"]] == [10]


def test_quality_per_hour_bucket_and_cost_per_utc_day(
    client: TestClient,  # noqa: F811
    tokens: dict[str, dict[str, str]],  # noqa: F811
    platform: Platform,
) -> None:
    add_deployment(platform, "daily")
    times = [
        DAY - timedelta(minutes=30),
        DAY + timedelta(minutes=10),
        DAY + timedelta(minutes=50),
        DAY + timedelta(hours=1, minutes=5),
    ]
    add_traffic(
        platform,
        [
            {
                "id": f"d{i}",
                "deployment": "daily",
                "arm": "control",
                "version": "bot/1",
                "created_at": moment,
                "cost": 0.5 * (i + 1),
                "prompt_tokens": 3,
                "completion_tokens": 7,
            }
            for i, moment in enumerate(times)
        ],
    )
    window = {
        "since": (DAY - timedelta(hours=2)).isoformat(),
        "until": (DAY + timedelta(hours=3)).isoformat(),
    }
    viewer = tokens["viewer"]
    hourly = client.get(
        f"{API}/monitors/quality",
        params={"deployment": "daily", "bucket": "1h", **window},
        headers=viewer,
    )
    assert hourly.status_code == 200, hourly.text
    rows = hourly.json()["rows"]
    buckets = [(datetime.fromisoformat(row["bucket"]), row["requests"]) for row in rows]
    assert buckets == [(DAY - timedelta(hours=1), 1), (DAY, 2), (DAY + timedelta(hours=1), 1)]

    cost = client.get(
        f"{API}/monitors/cost", params={"deployment": "daily", **window}, headers=viewer
    )
    assert cost.status_code == 200, cost.text
    report = cost.json()
    days = [(d["day"], d["requests"], d["tokens"], d["cost"]) for d in report["days"]]
    assert days == [("2026-03-13", 1, 10, 0.5), ("2026-03-14", 3, 30, pytest.approx(4.5))]
    assert report["cost"] == pytest.approx(5.0) and report["requests"] == 4
    assert report["tokens"] == 40

    # A naive time is UTC.
    naive = client.get(
        f"{API}/monitors/cost",
        headers=viewer,
        params={
            "deployment": "daily",
            "since": "2026-03-14T00:00:00",
            "until": "2026-03-14T01:00:00",
        },
    )
    assert naive.json()["requests"] == 2


def test_unknown_deployments_empty_windows_and_bad_buckets_are_4xx(
    client: TestClient,  # noqa: F811
    tokens: dict[str, dict[str, str]],  # noqa: F811
    bot: dict[str, list[str]],
) -> None:
    viewer = tokens["viewer"]
    past = {"since": "2020-01-01T00:00:00Z", "until": "2020-01-02T00:00:00Z"}
    for path in ("quality", "cost"):
        status, message = error_of(
            client.get(f"{API}/monitors/{path}", params={"deployment": "nope"}, headers=viewer)
        )
        assert status == 404 and "deployment 'nope' does not exist" in message
        status, message = error_of(
            client.get(
                f"{API}/monitors/{path}", params={"deployment": "bot", **past}, headers=viewer
            )
        )
        assert status == 404 and "has no traffic from 2020-01-01T00:00:00+00:00" in message
        assert "widen the window" in message
        status, message = error_of(
            client.get(
                f"{API}/monitors/{path}",
                headers=viewer,
                params={"deployment": "bot", "since": past["until"], "until": past["since"]},
            )
        )
        assert status == 400 and "must start before it ends" in message
    status, message = error_of(
        client.get(
            f"{API}/monitors/quality", params={"deployment": "bot", "arm": "ghost"}, headers=viewer
        )
    )
    assert status == 404 and "(arm 'ghost') has no traffic" in message
    for bucket in ("1M", "0h", "hour", "1.5h", "-1h"):
        status, message = error_of(
            client.get(
                f"{API}/monitors/quality",
                params={"deployment": "bot", "bucket": bucket},
                headers=viewer,
            )
        )
        assert status == 400 and "such as 5min or 1h" in message, bucket
    assert client.get(f"{API}/monitors/quality", params={"deployment": "bot"}).status_code == 401


def test_the_cli_prints_quality_and_cost_tables(
    platform: Platform, bot: dict[str, list[str]], cli_env: dict[str, str]
) -> None:
    env = cli_env
    runner = CliRunner()
    done = runner.invoke(
        cli_app, ["monitor", "quality", "--deployment", "bot", "--since", "2h"], env=env
    )
    assert done.exit_code == 0, done.output
    control = next(line for line in done.output.splitlines() if "control" in line)
    for shown in ("bot/1", "20.0%", "550", "955", "json_valid=0.75 (n=4)", "thumbs=0.5 (n=2)"):
        assert shown in control, (shown, done.output)
    done = runner.invoke(cli_app, ["monitor", "cost", "--deployment", "bot"], env=env)
    assert done.exit_code == 0, done.output
    assert "total: 0.018 for 14 request(s), 500 token(s)" in done.output
    done = runner.invoke(
        cli_app, ["monitor", "quality", "--deployment", "bot", "--since", "soon"], env=env
    )
    assert done.exit_code == 1 and "is not a time" in done.output
