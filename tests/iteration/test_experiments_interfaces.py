"""Experiments from the REST API and the CLI: create, follow, leaderboard, compare, cancel, and
refusals that store nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from evalhub.api.app import create_app
from evalhub.auth.tokens import create_token
from evalhub.cli.main import app as cli_app
from tests.iteration.test_checkpoint_eval import SUITE

API = "/api/v1"
SMALL = {
    "name": "tiny-sweep",
    "base": "tiny",
    "dataset": "upper-train",
    "suite": SUITE,
    "metric": "exact_match",
    "space": {"learning_rate": [0.001, 0.006]},
    "fixed": {"max_steps": 20, "batch_size": 16},
    "eval_every": 20,
}


@pytest.fixture
def headers(platform) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    made = {}
    for role in ("viewer", "editor", "admin"):
        _, secret = create_token(platform.engine, f"{role}-token", role, actor="test")
        made[role] = {"Authorization": f"Bearer {secret}"}
    return made


def test_the_api_creates_lists_shows_and_cancels_and_refuses_bad_input(  # type: ignore[no-untyped-def]
    platform, sweep_data, headers
) -> None:
    with TestClient(create_app(platform=platform)) as client:
        refused = client.post(
            f"{API}/experiments", json=SMALL | {"metric": "bleu"}, headers=headers["editor"]
        )
        assert (
            refused.status_code == 400
            and "has no metric 'bleu'" in refused.json()["error"]["message"]
        )
        unknown = client.post(
            f"{API}/experiments", json=SMALL | {"speed": "fast"}, headers=headers["editor"]
        )
        assert unknown.status_code == 422
        viewer = client.post(f"{API}/experiments", json=SMALL, headers=headers["viewer"])
        assert viewer.status_code == 403
        production = client.post(
            f"{API}/experiments", json=SMALL | {"alias": "production"}, headers=headers["editor"]
        )
        assert production.status_code == 403 and "admin" in production.json()["error"]["message"]
        assert platform.jobs.search(limit=10).data == []

        created = client.post(f"{API}/experiments", json=SMALL, headers=headers["editor"])
        assert created.status_code == 202, created.text
        experiment = created.json()
        assert (experiment["status"], experiment["trials_total"]) == ("queued", 2)
        assert [row["status"] for row in experiment["leaderboard"]["trials"]] == ["queued"] * 2
        listed = client.get(f"{API}/experiments", headers=headers["viewer"]).json()
        assert [item["id"] for item in listed["data"]] == [experiment["id"]]
        shown = client.get(f"{API}/experiments/{experiment['id']}", headers=headers["viewer"])
        assert shown.json()["trials"] == experiment["trials"]
        assert (
            client.get(f"{API}/experiments/exp-nope", headers=headers["viewer"]).status_code == 404
        )

        events = client.get(
            f"{API}/experiments/{experiment['id']}/events", headers=headers["viewer"]
        )
        assert events.json()[0]["message"].startswith("Created experiment tiny-sweep: 2 trials")

        cancel = f"{API}/experiments/{experiment['id']}/cancel"
        assert client.post(cancel, headers=headers["viewer"]).status_code == 403
        cancelled = client.post(cancel, headers=headers["editor"]).json()
        assert cancelled["status"] == "cancelled"
        assert {trial["status"] for trial in cancelled["trials"]} == {"cancelled"}
        again = client.post(cancel, headers=headers["editor"])
        assert again.status_code == 409 and "already cancelled" in again.json()["error"]["message"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_cli_runs_a_sweep_and_prints_the_leaderboard(  # type: ignore[no-untyped-def]
    platform, sweep_data, cli_env, tmp_path: Path
) -> None:
    (tmp_path / "suite.yaml").write_text(SUITE)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(SMALL | {"suite": "suite.yaml"}))
    runner = CliRunner()
    env = cli_env | {"COLUMNS": "160"}

    done = runner.invoke(cli_app, ["experiment", "run", str(sweep)], env=env)
    assert done.exit_code == 0, done.output
    assert "created exp-" in done.output and "2 trials (grid)" in done.output
    assert "vs baseline, 95% CI" in done.output and "best" in done.output
    assert "winner: tiny-tiny-sweep/" in done.output
    assert "where the best trial still fails: evalhub eval errors evalrun-" in done.output
    assert "now tiny-tiny-sweep@candidate" in done.output

    listed = runner.invoke(cli_app, ["experiment", "list", "--json"], env=env)
    (experiment,) = json.loads(listed.output)
    assert experiment["status"] == "succeeded" and experiment["winner"]
    shown = runner.invoke(cli_app, ["experiment", "show", experiment["id"]], env=env)
    assert shown.exit_code == 0 and "tiny-sweep" in shown.output and "chrf" in shown.output
    compared = runner.invoke(cli_app, ["experiment", "compare", experiment["id"]], env=env)
    assert compared.exit_code == 0, compared.output
    assert "learning_rate *" in compared.output and "suite_exact_match" in compared.output

    finished = runner.invoke(cli_app, ["experiment", "cancel", experiment["id"]], env=env)
    assert finished.exit_code == 1 and "already succeeded" in finished.output
    missing = runner.invoke(cli_app, ["experiment", "run", str(tmp_path / "nope.yaml")], env=env)
    assert missing.exit_code == 1 and "nope.yaml" in missing.output
