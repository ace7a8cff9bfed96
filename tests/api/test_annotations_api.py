"""Human evaluation over HTTP, on SQLite and PostgreSQL: queues drawn from real eval runs (the
capitals suite against a scripted model server, judged by a scripted judge server; both are
scripted because no model or judge runs here), labels by two raters, agreement, export, register."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from evalhub.eval.service import EvalRequest, EvalService, eval_handler
from evalhub.jobs.worker import Worker
from evalhub.platform import Platform
from tests.eval.scripted_capitals import CAPITALS, N_CASES, SUITE, request_body, scripted_capitals
from tests.scripted_server import ScriptedServer

API = "/api/v1/annotations"


def judge(body: dict[str, Any]) -> str:
    """5 for a city, 1 for "I am not sure."."""
    response = body["messages"][-1]["content"].split("Response to grade:\n", 1)[1]
    return "Unsure.\nSCORE: 1" if response.startswith("I am not sure.") else "A city.\nSCORE: 5"


def judged_run(platform: Platform, model: str, endpoint: str, judge_url: str) -> str:
    body = request_body(model, endpoint)
    judged = f"  - name: llm_judge\n    options: {{base_url: {judge_url}, model: scripted-judge}}\n"
    body["suite"] = SUITE.read_text(encoding="utf-8").replace(
        "  - name: latency\n", "  - name: latency\n" + judged
    )
    run = EvalService(platform).start(EvalRequest.model_validate(body), actor="tester").run.id
    assert Worker(platform.jobs, {"eval": eval_handler(platform)}).run_once()
    assert EvalService(platform).store.get(run).status == "completed"
    return run


@pytest.fixture
def runs(platform: Platform, start_scripted_server) -> dict[str, str]:  # type: ignore[no-untyped-def]
    target = start_scripted_server(ScriptedServer(scripted_capitals))
    judge_server = start_scripted_server(ScriptedServer(judge))
    return {
        model: judged_run(platform, model, target.base_url, judge_server.base_url)
        for model in ("good-model", "bad-model")
    }


def label_all(client: TestClient, queue: str, headers: dict[str, str], pick: Any) -> int:
    """Works through the queue as a rater does: next, label, next... Returns how many."""
    count = 0
    while item := client.get(f"{API}/queues/{queue}/next", headers=headers).json()["item"]:
        answer = client.put(
            f"{API}/queues/{queue}/items/{item['id']}/label",
            json={"value": pick(item)},
            headers=headers,
        )
        assert answer.status_code == 200, answer.text
        count += 1
    return count


def test_a_scale_queue_from_a_run_labelled_by_two_raters_with_judge_agreement(
    client: TestClient, tokens: dict[str, dict[str, str]], runs: dict[str, str]
) -> None:
    editor, admin, viewer = tokens["editor"], tokens["admin"], tokens["viewer"]
    body = {"name": "capitals-quality", "kind": "scale", "eval_run": runs["bad-model"]}
    assert client.post(f"{API}/queues", json=body, headers=viewer).status_code == 403
    created = client.post(f"{API}/queues", json=body, headers=editor)
    assert created.status_code == 201, created.text
    queue = created.json()
    assert (queue["items"], queue["labelled"], queue["choices"]) == (
        N_CASES,
        0,
        ["1", "2", "3", "4", "5"],
    )
    assert client.post(f"{API}/queues", json=body, headers=editor).status_code == 409

    first = client.get(f"{API}/queues/capitals-quality/next", headers=editor).json()
    item = first["item"]
    assert (first["done"], first["total"], item["position"]) == (0, N_CASES, 1)
    assert item["prompt"][-1]["content"] == "What is the capital of France?"
    assert "judges" not in item and "labels" not in item  # raters are not primed
    bad = client.put(
        f"{API}/queues/capitals-quality/items/{item['id']}/label", json={"value": 6}, headers=editor
    )
    assert bad.status_code == 400 and "1, 2, 3, 4, 5" in bad.json()["error"]["message"]

    # The editor agrees with the judge everywhere; the admin calls two right answers a 3.
    def agrees(item: dict[str, Any]) -> str:
        return "1" if item["output"] == "I am not sure." else "5"

    harsh = iter(range(N_CASES))

    def harsher(item: dict[str, Any]) -> str:
        return "3" if agrees(item) == "5" and next(harsh) < 2 else agrees(item)

    assert label_all(client, "capitals-quality", editor, agrees) == N_CASES
    assert label_all(client, "capitals-quality", admin, harsher) == N_CASES
    done = client.get(f"{API}/queues/capitals-quality/next", headers=editor).json()
    assert (done["item"], done["done"]) == (None, N_CASES)

    report = client.get(f"{API}/queues/capitals-quality/agreement", headers=viewer).json()
    (judge_row,) = report["judges"]
    assert (judge_row["left"], judge_row["n"], judge_row["items"]) == ("llm_judge", 32, 16)
    assert judge_row["raw"] == pytest.approx(30 / 32)
    assert judge_row["kappa_low"] <= judge_row["kappa"] <= judge_row["kappa_high"] <= 1
    (raters,) = report["raters"]
    assert (raters["left"], raters["right"], raters["n"]) == ("admin-token", "editor-token", 16)
    assert raters["raw"] == pytest.approx(14 / 16)

    # Labelling again replaces the rater's label: still one label per rater per item.
    again = client.put(
        f"{API}/queues/capitals-quality/items/{item['id']}/label",
        json={"value": "4", "comment": "second thoughts"},
        headers=editor,
    ).json()
    assert again["replaced"] is True and again["value"] == "4"
    queue = client.get(f"{API}/queues/capitals-quality", headers=viewer).json()
    assert (queue["labels"], queue["labelled"]) == (2 * N_CASES, N_CASES)
    assert queue["raters"] == ["admin-token", "editor-token"]

    exported = client.get(f"{API}/queues/capitals-quality/export", headers=viewer)
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert len(lines) == 2 * N_CASES
    assert {"rater": "editor-token", "value": "4", "comment": "second thoughts"}.items() <= next(
        line for line in lines if line["item"] == item["id"] and line["rater"] == "editor-token"
    ).items()

    registered = client.post(
        f"{API}/queues/capitals-quality/register", json={"dataset": "gold"}, headers=editor
    )
    assert registered.status_code == 201, registered.text
    assert registered.json()["rows"] == N_CASES
    assert registered.json()["version"]["format"] == "eval"
    rows = client.get("/api/v1/datasets/gold/versions/1/content", headers=viewer).text.splitlines()
    france = json.loads(rows[0])
    assert france["id"] == "fr" and france["expected"] == "Paris"
    assert len(france["metadata"]["labels"]) == 2
    same = client.post(
        f"{API}/queues/capitals-quality/register", json={"dataset": "gold"}, headers=editor
    )
    assert same.status_code == 200 and same.json()["created"] is False

    changes = client.get("/api/v1/events/history?resource=annotations", headers=admin).json()
    actions = {change["action"] for change in changes["data"]}
    assert {"annotation_queue.create", "annotation.create", "annotation.replace"} <= actions


def test_a_pairwise_queue_hides_which_answer_is_which_and_resolves_the_choice(
    client: TestClient, tokens: dict[str, dict[str, str]], runs: dict[str, str]
) -> None:
    editor = tokens["editor"]
    body = {
        "name": "good-vs-bad",
        "kind": "pairwise",
        "eval_run": runs["good-model"],
        "baseline_run": runs["bad-model"],
        "seed": 3,
    }
    assert client.post(f"{API}/queues", json=body, headers=editor).status_code == 201
    orders = set()

    # The rater always picks the right capital, wherever it is shown.
    def right(item: dict[str, Any]) -> str:
        country = item["prompt"][-1]["content"].removeprefix("What is the capital of ")[:-1]
        if item["a"] == item["b"]:
            return "tie"
        orders.add(item["a"] == CAPITALS[country])
        return "a" if item["a"] == CAPITALS[country] else "b"

    assert label_all(client, "good-vs-bad", editor, right) == N_CASES
    assert orders == {True, False}, "the candidate must be shown first on some items only"
    items = client.get(f"{API}/queues/good-vs-bad/items", headers=editor).json()["data"]
    values = {item["source_id"]: item["labels"][0]["value"] for item in items}
    assert values["br"] == values["au"] == "candidate"  # the items the baseline gets wrong
    assert values["fr"] == "tie"
    report = client.get(f"{API}/queues/good-vs-bad/agreement", headers=editor).json()
    # The runs' judge grades on a rubric, not pairs: nothing to compare a choice with.
    assert report["judges"] == [] and report["raters"] == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"kind": "scale"}, 422, "exactly one source"),
        ({"kind": "scale", "eval_run": "r", "deployment": "d"}, 422, "exactly one source"),
        ({"kind": "pairwise", "eval_run": "r"}, 422, "give eval_run and baseline_run"),
        ({"kind": "labels", "eval_run": "r"}, 422, "declares its labels"),
        ({"kind": "scale", "scale": [1, 1], "eval_run": "r"}, 422, "2 to 11 points"),
        ({"kind": "scale", "eval_run": "evalrun-missing"}, 404, "evalrun-missing"),
        ({"kind": "scale", "deployment": "nowhere"}, 404, "nowhere"),
    ],
)
def test_bad_queues_are_refused_with_a_message_and_store_nothing(
    client: TestClient, tokens: dict[str, dict[str, str]], body: dict, status: int, message: str
) -> None:
    answer = client.post(f"{API}/queues", json={"name": "q", **body}, headers=tokens["editor"])
    assert answer.status_code == status, answer.text
    assert message in answer.text
    assert client.get(f"{API}/queues", headers=tokens["viewer"]).json()["data"] == []
    assert client.get(f"{API}/queues/q/next", headers=tokens["editor"]).status_code == 404
