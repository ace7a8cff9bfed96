"""`evalhub annotate` against the seeded real server: create a queue from a run, label in the
terminal (a wrong key asks again, q stops), the agreement table, export, register, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from evalhub.cli.main import app as cli_app
from tests.dashboard.conftest import Seeded

# One test process for the seeded server, under --dist loadgroup (see tests/dashboard/conftest.py).
pytestmark = pytest.mark.xdist_group("dashboard")


def test_annotate_from_the_terminal(seeded: Seeded, tmp_path: Path) -> None:
    env = {"EVALHUB_URL": seeded.url, "EVALHUB_TOKEN": seeded.admin, "COLUMNS": "200"}
    runner = CliRunner()

    def cli(*args: str, code: int = 0, given: str | None = None) -> str:
        done = runner.invoke(cli_app, list(args), env=env, input=given)
        assert done.exit_code == code, done.output
        return done.output

    created = cli("annotate", "create", "cli-queue", "--run", seeded.baseline_run, "--sample", "3")
    assert "queue cli-queue: 3 items, scale (1 / 2 / 3 / 4 / 5)" in created
    listed = cli("annotate", "list")
    assert "cli-queue" in listed and "deployment chat" in listed  # the seeded traffic queue

    # A wrong key asks again; two labels, then q stops with the progress.
    out = cli("annotate", "label", "cli-queue", given="9\n5\n2\nq\n")
    assert "item 1 of 3" in out and "item 3 of 3" in out
    assert "one of: 1, 2, 3, 4, 5" in out and "stopped: 2/3 labelled by you" in out
    out = cli("annotate", "label", "cli-queue", given="3\n")
    assert "all 3 items of cli-queue are labelled by you" in out

    shown = cli("annotate", "show", "cli-queue")
    assert "3/3 items labelled, 3 labels by 1 rater(s)" in shown
    assert "llm_judge" in shown and "humans" in shown and "bootstrap" in shown

    target = tmp_path / "labels.jsonl"
    assert "wrote 3 labels" in cli("annotate", "export", "cli-queue", "-o", str(target))
    values = [json.loads(line)["value"] for line in target.read_text().splitlines()]
    assert values == ["5", "2", "3"]
    assert "registered cli-gold/1: 3 labelled items" in cli(
        "annotate", "register", "cli-queue", "cli-gold"
    )

    assert "no eval run" in cli("annotate", "create", "x", "--run", "evalrun-nope", code=1)
    assert "--scale is LOW-HIGH" in cli(
        "annotate", "create", "x", "--run", seeded.baseline_run, "--scale", "five", code=1
    )
    assert "deleted queue cli-queue" in cli("annotate", "delete", "cli-queue")
    headers = {"Authorization": f"Bearer {seeded.admin}"}
    gone = httpx.get(f"{seeded.url}/api/v1/annotations/queues/cli-queue", headers=headers)
    assert gone.status_code == 404
