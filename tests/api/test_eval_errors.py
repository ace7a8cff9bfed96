"""Error analysis on a run with a known failure pattern: a scripted model (a real HTTP server on
127.0.0.1; scripted because no model that fails on cue runs here) that misses every Asian
capital. The pattern must show as a group, and its export must register rows that name their
source. On SQLite and PostgreSQL, over HTTP and through the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from evalhub.cli.main import app as cli_app
from evalhub.platform import Platform
from tests.eval.scripted_capitals import CAPITALS, DATASET, N_CASES, scripted_capitals
from tests.eval.test_service import run_queued_job, start
from tests.scripted_server import ScriptedServer

API = "/api/v1/evals"
ASIA = {
    row["input"]
    for row in map(json.loads, DATASET.read_text().splitlines())
    if "asia" in row["tags"]
}


def blind_to_asia(body: dict[str, Any]) -> str:
    country = body["messages"][-1]["content"].removeprefix("What is the capital of ")[:-1]
    return "I am not sure." if country in ASIA else CAPITALS[country]


@pytest.fixture
def runs(platform: Platform, start_scripted_server) -> dict[str, str]:  # type: ignore[no-untyped-def]
    ids = {}
    for name, script in (("good", scripted_capitals), ("blind", blind_to_asia)):
        server = start_scripted_server(ScriptedServer(script))
        ids[name] = start(platform, "good-model", server.base_url)
        run_queued_job(platform)
    return ids


def test_the_failing_slice_is_found_and_exported_as_training_rows(
    client: TestClient, tokens: dict[str, dict[str, str]], runs: dict[str, str]
) -> None:
    viewer, editor = tokens["viewer"], tokens["editor"]
    report = client.get(f"{API}/{runs['blind']}/errors", headers=viewer).json()
    assert (report["metric"], report["cases"], report["failures"]) == ("exact_match", N_CASES, 6)
    worst = report["by_slice"][0]
    assert (worst["name"], worst["cases"], worst["failures"], worst["failure_rate"]) == (
        "slice:asia",
        6,
        6,
        1.0,
    )
    assert all(group["failures"] == 0 for group in report["by_slice"][1:])
    assert worst["examples"][0]["output"] == "I am not sure."
    assert {m["metric"]: m["failures"] for m in report["by_metric"]}["exact_match"] == 6
    clusters = report["clusters"]
    assert len(clusters) == 4 and sum(c["cases"] for c in clusters) == N_CASES
    assert sum(c["failures"] for c in clusters) == 6
    assert clusters[0]["failures"] == max(c["failures"] for c in clusters)  # worst first

    regressed = client.get(
        f"{API}/{runs['blind']}/errors", params={"baseline": runs["good"]}, headers=viewer
    ).json()
    assert regressed["failures"] == 6 and "lower than in" in regressed["rule"]
    assert client.get(f"{API}/{runs['good']}/errors", headers=viewer).json()["failures"] == 0

    exported = client.post(
        f"{API}/{runs['blind']}/errors/export",
        json={"group": "slice:asia", "as": "chat", "dataset": "asia-fixes"},
        headers=editor,
    )
    assert exported.status_code == 201, exported.text
    assert exported.json()["rows"] == 6 and exported.json()["version"]["format"] == "chat"
    content = client.get("/api/v1/datasets/asia-fixes/versions/1/content", headers=viewer)
    rows = [json.loads(line) for line in content.text.splitlines()]
    assert {row["metadata"]["case_id"] for row in rows} == {"jp", "kr", "in", "th", "vn", "id"}
    assert all(row["metadata"]["source_run"] == runs["blind"] for row in rows)
    tokyo = next(row for row in rows if row["metadata"]["case_id"] == "jp")
    assert tokyo["messages"][-1] == {"role": "assistant", "content": "Tokyo"}
    assert tokyo["messages"][-2]["content"] == "What is the capital of Japan?"

    cases = client.post(
        f"{API}/{runs['blind']}/errors/export",
        json={"group": "cluster:1", "as": "eval", "dataset": "hard-cases"},
        headers=editor,
    )
    assert cases.status_code == 201, cases.text
    assert cases.json()["rows"] == clusters[0]["failures"]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("errors?metric=bleu", None, "has no metric 'bleu'"),
        ("errors/export", {"group": "cluster:99", "as": "chat", "dataset": "x"}, "cluster:1 to"),
        ("errors/export", {"group": "slice:mars", "as": "chat", "dataset": "x"}, "no slice"),
        ("errors/export", {"group": "slice:europe", "as": "chat", "dataset": "x"}, "no failing"),
    ],
)
def test_bad_error_queries_are_refused_with_a_message(
    client: TestClient,
    tokens: dict[str, dict[str, str]],
    runs: dict[str, str],
    path: str,
    body: dict[str, Any] | None,
    message: str,
) -> None:
    url = f"{API}/{runs['blind']}/{path}"
    answer = (
        client.get(url, headers=tokens["viewer"])
        if body is None
        else client.post(url, json=body, headers=tokens["editor"])
    )
    assert answer.status_code == 400 and message in answer.text, answer.text
    assert client.get("/api/v1/datasets", headers=tokens["viewer"]).json()["data"] == []


def test_the_cli_prints_the_groups_and_exports(
    runs: dict[str, str], cli_env: dict[str, str]
) -> None:
    runner = CliRunner()
    done = runner.invoke(cli_app, ["eval", "errors", runs["blind"], "--clusters", "2"], env=cli_env)
    assert done.exit_code == 0, done.output
    assert "6 of 16 cases fail: exact_match below 0.5 (or unscored)" in done.output
    asia = next(line for line in done.output.splitlines() if "slice:asia" in line)
    assert "100%" in asia and "I am not sure." in asia
    exported = runner.invoke(
        cli_app,
        ["eval", "errors", runs["blind"], "--export", "slice:asia", "--dataset", "fixes"],
        env=cli_env,
    )
    assert exported.exit_code == 0, exported.output
    assert "registered fixes/1: 6 chat rows from slice:asia" in exported.output
    missing = runner.invoke(
        cli_app, ["eval", "errors", runs["blind"], "--export", "all"], env=cli_env
    )
    assert missing.exit_code == 1 and "--export needs --dataset" in missing.output


def test_a_run_the_cli_made_against_an_endpoint_keeps_its_inputs(
    client: TestClient,
    tokens: dict[str, dict[str, str]],
    cli_env: dict[str, str],
    start_scripted_server,  # type: ignore[no-untyped-def]
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """`evalhub eval run --endpoint` sends its suite and dataset with the run it records, so
    the run can be analysed like one the server ran; a suite that is not the run's is refused."""
    from tests.eval.scripted_capitals import SUITE

    server = start_scripted_server(ScriptedServer(blind_to_asia))
    runner = CliRunner()
    output = tmp_path / "run.json"
    ran = runner.invoke(
        cli_app,
        ["eval", "run", str(SUITE), "--model", "blind", "--endpoint", server.base_url,
         "--output", str(output)],
        env=cli_env,
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    run = json.loads(output.read_text())
    report = client.get(f"{API}/{run['run_id']}/errors", headers=tokens["viewer"]).json()
    assert report["by_slice"][0]["name"] == "slice:asia" and report["failures"] == 6

    other = SUITE.read_text().replace("threshold: 0.6", "threshold: 0.7")
    refused = client.post(
        f"{API}/import",
        json={"run": run | {"run_id": "evalrun-" + "0" * 24}, "suite": other,
              "filename": SUITE.name, "dataset": DATASET.read_text()},
        headers=tokens["editor"],
    )  # fmt: skip
    assert refused.status_code == 400 and "digests differ" in refused.text, refused.text
    assert client.get(f"{API}/evalrun-{'0' * 24}", headers=tokens["viewer"]).status_code == 404
