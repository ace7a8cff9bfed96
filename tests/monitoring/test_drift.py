"""Drift checks through the REST API on SQLite and PostgreSQL: traffic from another distribution
(other topics, other lengths, slower) is flagged, traffic like the reference is not, and each check
keeps its summary, its Evidently report and the prompt embeddings it computed."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from evalhub.api.app import create_app
from evalhub.monitoring.drift_tables import PromptEmbeddingRow
from evalhub.platform import Platform
from evalhub.serving.tables import DeploymentRow, TrafficRow
from registry.tables import utcnow

API = "/api/v1"
PETS = ["cat", "dog", "parrot", "hamster", "rabbit", "goldfish", "turtle", "puppy", "kitten"]
NEEDS = ["food", "toys", "a bed", "a walk", "a vet", "water", "a brush", "treats"]
FINANCE = ["bond yields", "inflation", "interest rates", "equity markets", "the central bank",
           "currency swaps", "credit spreads", "pension funds", "quarterly earnings"]  # fmt: skip


def pet_prompt(rng: random.Random) -> str:
    return f"what does my {rng.choice(PETS)} need, {rng.choice(NEEDS)} or {rng.choice(NEEDS)}?"


def finance_prompt(rng: random.Random) -> str:
    topics = ", ".join(rng.sample(FINANCE, 5))
    return (
        f"Write a detailed analysis of how {topics} interact over the next decade, with "
        f"scenarios, risks and a recommendation for a portfolio of {rng.randint(3, 9)} assets."
    )


def add_traffic(
    platform: Platform, n: int, seed: int, *, shifted: bool, start_minutes: int
) -> None:
    rng = random.Random(seed)
    start = utcnow() - timedelta(minutes=start_minutes)
    with Session(platform.engine) as session:
        for i in range(n):
            prompt = finance_prompt(rng) if shifted else pet_prompt(rng)
            words = rng.randint(40, 80) if shifted else rng.randint(3, 10)
            session.add(
                TrafficRow(
                    id=f"req-{seed}-{i}",
                    created_at=start + timedelta(seconds=i),
                    deployment="shop",
                    arm="main",
                    model="shop",
                    version="bot/1",
                    endpoint="chat.completions",
                    request={"messages": [{"role": "user", "content": prompt}]},
                    response_text=" ".join(rng.choice(NEEDS) for _ in range(words)),
                    status=200,
                    latency_ms=rng.gauss(160 if shifted else 100, 10),
                    prompt_tokens=len(prompt) // 4,
                    completion_tokens=words * 2,
                )
            )
        session.commit()


@pytest.fixture
def api(platform: Platform) -> TestClient:
    with Session(platform.engine) as session:
        session.add(DeploymentRow(name="shop", backend="cpu",
                                  arms=[{"name": "main", "model": "bot/1", "weight": 100}]))  # fmt: skip
        session.commit()
    with TestClient(create_app(platform=platform, local_principal=_admin())) as client:
        yield client


def _admin():  # type: ignore[no-untyped-def]
    from evalhub.auth.tokens import Principal

    return Principal(name="tester", role="admin")


def check(api: TestClient, **body: object) -> dict:
    response = api.post(f"{API}/monitors/drift", json={"deployment": "shop", **body})
    assert response.status_code == 201, response.text
    return response.json()


def test_shifted_traffic_is_flagged_and_like_traffic_is_not(
    api: TestClient, platform: Platform
) -> None:
    add_traffic(platform, 300, seed=1, shifted=False, start_minutes=60)  # the reference
    add_traffic(platform, 300, seed=2, shifted=False, start_minutes=30)  # like it
    windows = {"reference": {"first": 300}, "embedding_sample": 200}
    calm = check(api, current={"last": 300}, **windows)
    assert not calm["drifted"], calm["summary"]
    assert calm["summary"]["embedding_drifted"] is False
    assert calm["reference"]["rows"] == calm["current"]["rows"] == 300

    add_traffic(platform, 300, seed=3, shifted=True, start_minutes=10)  # other topics, longer
    shifted = check(api, current={"last": 300}, **windows)
    assert shifted["drifted"] and shifted["summary"]["embedding_drifted"] is True
    columns = {c["column"]: c for c in shifted["summary"]["columns"]}
    for name in ("prompt_chars", "response_words", "latency_ms"):
        assert columns[name]["drifted"], columns[name]
        assert columns[name]["method"] and columns[name]["threshold"] > 0
    assert shifted["share_drifted"] > 0.5

    # Stored, listed, reported; the embeddings were computed once per record and kept.
    assert api.get(f"{API}/monitors/drift/{shifted['id']}").json() == shifted
    listed = api.get(f"{API}/monitors/drift", params={"deployment": "shop"}).json()["data"]
    assert [c["id"] for c in listed] == [shifted["id"], calm["id"]]
    report = api.get(shifted["report_url"])
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert b"<html" in report.content[:2000].lower()
    with Session(platform.engine) as session:
        embedded = session.exec(select(func.count()).select_from(PromptEmbeddingRow)).one()
    assert embedded == 600  # 200 per window: the reference's were computed once, then reused
    exported = api.post(
        f"{API}/monitors/export",
        json={"deployment": "shop", "drifted": shifted["id"], "as": "eval", "dataset": "drifted"},
    )
    assert exported.status_code == 201, exported.text
    assert exported.json()["rows"] == 300  # the check's current window: the shifted requests
    content = api.get(f"{API}/datasets/drifted/versions/1/content").text.splitlines()
    assert all('"request_id": "req-3-' in line for line in content)

    metrics = api.get("/metrics").text  # arm "-": the check took every arm
    assert 'evalhub_drift_detected{arm="-",deployment="shop"} 1.0' in metrics
    share = f'evalhub_drift_share{{arm="-",deployment="shop"}} {shifted["share_drifted"]}'
    assert share in metrics


def test_bad_drift_checks_are_refused_and_store_nothing(
    api: TestClient, platform: Platform
) -> None:
    add_traffic(platform, 20, seed=4, shifted=False, start_minutes=5)
    for body, status, message in (
        ({"deployment": "nope"}, 404, "does not exist"),
        ({"deployment": "shop", "arm": "other"}, 400, "no arm"),
        ({"deployment": "shop", "current": {"since": "2001-01-01T00:00:00Z",
                                            "until": "2001-01-02T00:00:00Z"}}, 400, "no traffic"),
        ({"deployment": "shop", "current": {"last": 5, "first": 5}}, 422, "one of them"),
        ({"deployment": "shop", "reference": {"dataset": "missing/1"}}, 404, "missing"),
    ):  # fmt: skip
        response = api.post(f"{API}/monitors/drift", json=body)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["error"]["message"], response.text
    assert api.get(f"{API}/monitors/drift").json()["data"] == []
    assert api.get(f"{API}/monitors/drift/drift-0000").status_code == 404
