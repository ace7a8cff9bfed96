"""Feedback on real gateway answers, linked to the exact version that answered, and exported with
the requests it is about as a registered dataset: production back to evaluation and training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from evalhub.client import ApiError
from tests.monitoring.conftest import Served
from tests.monitoring.test_rollout_controller import create, send

# One worker builds this module's server (a module fixture), under --dist loadgroup.
pytestmark = pytest.mark.xdist_group("monitoring-feedback")


def count_feedback(served: Served) -> int:
    return len(served.api.get("/feedback", limit=1000)["data"])


def test_feedback_is_linked_to_the_version_that_answered(served: Served) -> None:
    served.api.post("/deployments", {
        "name": "fb", "backend": "cpu",
        "arms": [{"name": "a", "model": "bot/1", "weight": 50},
                 {"name": "b", "model": "bot/3", "weight": 50}],
    })  # fmt: skip
    replies = send(served, "fb", 8)
    by_arm = {r.headers["x-evalhub-arm"]: r for r in replies}
    assert set(by_arm) == {"a", "b"}
    reply = by_arm["b"]
    request_id = reply.headers["x-evalhub-request-id"]
    posted = served.api.post("/feedback", {"request_id": request_id, "score": 0, "comment": "no"})
    assert (posted["deployment"], posted["arm"], posted["version"]) == ("fb", "b", "bot/3")
    assert posted["replaced"] is False
    again = served.api.post("/feedback", {"request_id": request_id, "score": 1})
    assert again["replaced"] is True and again["score"] == 1
    listed = served.api.get("/feedback", version="bot/3")["data"]
    assert [(f["request_id"], f["score"]) for f in listed] == [(request_id, 1.0)]
    assert served.api.get("/feedback", version="bot/1")["data"] == []
    audit = served.api.get("/audit", resource=f"feedback/{request_id}/thumbs")["data"]
    assert [a["action"] for a in audit] == ["feedback.replace", "feedback.create"]

    before = count_feedback(served)
    for body, status, message in (
        ({"request_id": "req-unknown", "score": 1}, 404, "no gateway request"),
        ({"request_id": request_id, "score": 0.5}, 400, "1 (up) or 0 (down)"),
        ({"request_id": request_id, "score": 9, "name": "rating"}, 400, "from 1 to 5"),
        ({"request_id": request_id, "score": 1, "name": "stars"}, 400, "no declared scale"),
        ({"request_id": request_id, "score": 1, "extra": True}, 422, "extra"),
    ):
        with pytest.raises(ApiError) as refused:
            served.api.post("/feedback", body)
        assert refused.value.status == status and message in refused.value.message, body
    assert count_feedback(served) == before


def test_negative_feedback_exports_a_dataset_whose_rows_carry_their_request_ids(
    served: Served,
) -> None:
    create(served, "exp", "bot/2")
    replies = send(served, "exp", 6, start=100)
    ids = [r.headers["x-evalhub-request-id"] for r in replies]
    for request_id, score in zip(ids, [0, 1, 0, 1, 1, 0], strict=True):
        served.api.post("/feedback", {"request_id": request_id, "score": score})
    negative = {ids[0], ids[2], ids[5]}
    done = subprocess.run(
        [sys.executable, "-m", "evalhub", "monitor", "export", "--deployment", "exp",
         "--feedback", "negative", "--as", "chat", "--dataset", "hard-cases"],
        env={**os.environ, **served.env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "registered hard-cases/1: 3 chat row(s)" in done.stdout
    content = served.api.request("GET", "/datasets/hard-cases/versions/1/content")
    rows = [json.loads(line) for line in content.decode().splitlines()]
    assert {row["metadata"]["request_id"] for row in rows} == negative
    by_id = {r.headers["x-evalhub-request-id"]: r.json() for r in replies}
    for row in rows:
        answer = by_id[row["metadata"]["request_id"]]["choices"][0]["message"]["content"]
        assert row["messages"][-1] == {"role": "assistant", "content": answer}
        assert row["messages"][0]["role"] == "user"

    cases = served.api.post(
        "/monitors/export", {"deployment": "exp", "as": "eval", "dataset": "exp-cases"}
    )
    assert cases["rows"] == 6 and cases["version"]["format"] == "eval"
    with pytest.raises(ApiError, match="does not exist"):
        served.api.post("/monitors/export", {"deployment": "nope", "as": "eval", "dataset": "x"})
    with pytest.raises(ApiError, match="match the export"):
        served.api.post(
            "/monitors/export",
            {"deployment": "exp", "as": "chat", "dataset": "x", "feedback": "negative",
             "arm": "canary"},
        )  # fmt: skip
    with pytest.raises(ApiError):
        served.api.get("/datasets/x")


def test_sampled_answers_are_scored_once_off_the_request_path(served: Served) -> None:
    create(served, "scored", "bot/2")
    with pytest.raises(ApiError, match="cannot score live traffic"):
        served.api.patch("/deployments/scored", {"monitoring": {"metrics": [{"name": "bleu"}]}})
    served.api.patch(
        "/deployments/scored",
        {"monitoring": {"sample_rate": 0.5, "metrics": [{"name": "json_valid"}]}},
    )
    replies = send(served, "scored", 40, start=200)
    first = served.api.post("/monitors/run", {"deployment": "scored"})
    assert 10 <= first["scored"] <= 30  # about half of 40, chosen by request id
    assert served.api.post("/monitors/run", {"deployment": "scored"})["scored"] == 0
    quality = served.api.get("/monitors/quality", deployment="scored")["rows"]
    (row,) = quality
    assert row["requests"] == len(replies)
    assert row["metrics"]["json_valid"]["count"] == first["scored"]
    assert row["metrics"]["json_valid"]["mean"] >= 0.9  # bot/1 answers JSON
