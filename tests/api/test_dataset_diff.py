"""`evalhub datasets diff` and GET /datasets/NAME/versions/N/diff, on SQLite and PostgreSQL:
rows added, removed and changed between two versions, and contradictions flagged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from evalhub.cli.main import app as cli_app
from evalhub.platform import Platform

API = "/api/v1"


def chat(prompt: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]
    }


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_chat_versions_diff_by_prompt_and_flag_contradictions(
    platform: Platform, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    first = [chat("2+2", "4"), chat("capital of France", "Paris"), chat("colour of sky", "blue")]
    second = [
        chat("2+2", "4"),  # unchanged
        chat("capital of France", "Lyon"),  # changed answer
        chat("largest planet", "Jupiter"),  # added; "colour of sky" removed
        chat("largest planet", "Saturn"),  # the same prompt answered twice: a contradiction
    ]
    store = platform.registry
    store.add_dataset_version("qa", write(tmp_path / "a.jsonl", first), format="chat", create=True)
    store.add_dataset_version("qa", write(tmp_path / "b.jsonl", second), format="chat")

    env = cli_env
    runner = CliRunner()
    done = runner.invoke(cli_app, ["datasets", "diff", "qa/1", "qa", "--json"], env=env)
    assert done.exit_code == 0, done.output
    diff = json.loads(done.output)
    assert (diff["base"], diff["target"]) == ("qa/1", "qa/2")
    assert (diff["added"], diff["removed"], diff["changed"], diff["unchanged"]) == (1, 1, 1, 1)
    assert diff["examples_removed"] == [chat("colour of sky", "blue")]
    (changed,) = diff["examples_changed"]
    assert changed["before"] == chat("capital of France", "Paris")
    assert changed["after"] == chat("capital of France", "Lyon")
    (contradiction,) = diff["contradictions"]
    assert contradiction["lines"] == [3, 4] and len(contradiction["answers"]) == 2
    assert "largest planet" in contradiction["prompt"] and diff["contradictions_in_base"] == 0

    shown = runner.invoke(cli_app, ["datasets", "diff", "qa/1", "qa/2"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "qa/1 → qa/2: 1 added, 1 removed, 1 changed, 1 unchanged" in shown.output
    assert "contradictions" in shown.output and "Saturn" in shown.output
    checked = runner.invoke(cli_app, ["datasets", "diff", "qa/1", "qa/2", "--check"], env=env)
    assert checked.exit_code == 1  # for CI: a version with contradictions fails
    clean = runner.invoke(cli_app, ["datasets", "diff", "qa/2", "qa/1", "--check"], env=env)
    assert clean.exit_code == 0, clean.output


def test_eval_cases_match_by_id_and_bad_diffs_are_refused(
    client: TestClient, tokens: dict[str, dict[str, str]], platform: Platform, tmp_path: Path
) -> None:
    store = platform.registry
    cases = [{"id": "a", "input": "x", "expected": "1"}, {"id": "b", "input": "y", "expected": "2"}]
    edited = [{"id": "a", "input": "x (reworded)", "expected": "1"}, cases[1]]
    store.add_dataset_version(
        "suite", write(tmp_path / "c.jsonl", cases), format="eval", create=True
    )
    store.add_dataset_version("suite", write(tmp_path / "d.jsonl", edited), format="eval")
    store.add_dataset_version(
        "chats", write(tmp_path / "e.jsonl", [chat("q", "a")]), format="chat", create=True
    )
    viewer = tokens["viewer"]

    diff = client.get(f"{API}/datasets/suite/versions/2/diff", headers=viewer).json()  # vs 1
    assert (diff["base"], diff["changed"], diff["added"], diff["removed"]) == ("suite/1", 1, 0, 0)
    assert diff["examples_changed"][0]["key"] == "id:a"

    first = client.get(f"{API}/datasets/suite/versions/1/diff", headers=viewer)
    assert first.status_code == 400 and "first version" in first.text
    mixed = client.get(f"{API}/datasets/suite/versions/2/diff?base=chats/1", headers=viewer)
    assert mixed.status_code == 400 and "only versions of one format compare" in mixed.text
    missing = client.get(f"{API}/datasets/suite/versions/2/diff?base=nope/1", headers=viewer)
    assert missing.status_code == 404
