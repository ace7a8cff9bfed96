"""`evalhub finetune ...` and `evalhub models create-tiny` in the CLI's in-process mode."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from evalhub.cli.main import app
from evalhub.cli.output import TrainingEvent, follow_training
from evalhub.finetune.tasks import upper_case_task, write_jsonl


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    env = {"EVALHUB_HOME": str(tmp_path / "home"), "EVALHUB_URL": "", "COLUMNS": "160"}

    def invoke(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env)
        output = result.output + (result.stderr if result.stderr_bytes is not None else "")
        assert result.exit_code == code, f"{args}: {output}"
        assert "Traceback" not in output
        return output

    return invoke


def test_create_tiny_validate_estimate_run_and_inspect(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert "registered tiny/1" in cli("models", "create-tiny", "tiny", "--pretrain-steps", "10")

    train = write_jsonl(tmp_path / "train.jsonl", upper_case_task(40, seed=1))
    rows = upper_case_task(12, seed=2)
    rows[2] = {"messages": [{"role": "user", "content": "no answer"}]}
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = cli("finetune", "validate", str(bad), code=1)
    assert "line 3: example_missing_assistant_message" in out
    out = cli("finetune", "validate", str(train), "--model", "tiny")
    assert "40 examples, OK" in out and "tokens per example" in out

    out = cli("finetune", "estimate", "--model", "tiny", "--method", "lora", "--rank", "16")
    assert "lora" in out and "79,872" in out and "optimizer" in out

    config = tmp_path / "job.yaml"
    config.write_text(
        "model: tiny\ntraining_file: train.jsonl\nsuffix: cli\nseed: 1\nmethod: lora\n"
        "options: {rank: 4}\ntraining: {max_steps: 4, checkpoint_every: 2}\n"
        "hyperparameters: {batch_size: 8}\n"
    )
    out = cli("finetune", "run", str(config))
    assert "succeeded: ft:tiny:cli:ftjob-" in out and "registered tiny-cli/1" in out
    assert "Checkpoint saved at step 2" in out
    job_id = out.split("created ")[1].split()[0]

    listed = json.loads(cli("finetune", "jobs", "list", "--json"))
    assert [job["id"] for job in listed] == [job_id]
    shown = json.loads(cli("finetune", "jobs", "show", job_id, "--json"))
    assert shown["status"] == "succeeded" and shown["evalhub"]["registered_version"] == "tiny-cli/1"
    assert "Step 4/4: training loss=" in cli("finetune", "jobs", "events", job_id)
    assert "already succeeded" in cli("finetune", "jobs", "cancel", job_id, code=1)

    # Each job is an experiment run: its metric series, and a side-by-side with another run.
    metrics = json.loads(cli("finetune", "jobs", "metrics", job_id, "--json"))
    assert [point["step"] for point in metrics["series"]] == [1, 2, 3, 4]
    assert all(
        point["train_loss"] > 0 and point["learning_rate"] >= 0 for point in metrics["series"]
    )
    assert metrics["params"]["lora.rank"] == 4 and metrics["final"]["steps"] == 4
    assert "train_loss" in cli("finetune", "jobs", "metrics", job_id)
    config.write_text(config.read_text().replace("rank: 4", "rank: 8"))
    other = cli("finetune", "run", str(config)).split("created ")[1].split()[0]
    compared = json.loads(cli("finetune", "compare", job_id, other, "--json"))
    assert compared["differing_params"] == ["lora.rank"]
    assert [run["params"]["lora.rank"] for run in compared["runs"]] == [4, 8]
    assert [run["registered_version"] for run in compared["runs"]] == ["tiny-cli/1", "tiny-cli/2"]
    table = cli("finetune", "compare", job_id, other)
    assert "lora.rank *" in table and "train_loss" in table
    assert "compare 2 to 10" in cli("finetune", "compare", job_id, code=1)
    assert "no fine-tuning job" in cli("finetune", "compare", job_id, "ftjob-nope", code=1)

    # A job created with --detach, followed to its end later (in-process: by this command's worker).
    detached = cli("finetune", "run", str(config), "--detach").split("created ")[1].split()[0]
    assert json.loads(cli("finetune", "jobs", "show", detached, "--json"))["status"] == "queued"
    followed = cli("finetune", "jobs", "follow", detached)
    assert "Checkpoint saved at step 4" in followed
    assert f"succeeded: ft:tiny:cli:{detached}" in followed and "registered tiny-cli/3" in followed
    assert "no fine-tuning job" in cli("finetune", "jobs", "follow", "ftjob-nope", code=1)

    config.write_text(config.read_text().replace("train.jsonl", "bad.jsonl"))
    out = cli("finetune", "run", str(config), code=1)
    assert "line 3: example_missing_assistant_message" in out
    assert len(json.loads(cli("finetune", "jobs", "list", "--json"))) == 3


def test_a_job_yaml_with_an_unknown_executor_is_refused_before_anything_is_sent(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "train.jsonl", upper_case_task(12, seed=1))
    config = tmp_path / "job.yaml"
    config.write_text("model: tiny\ntraining_file: train.jsonl\nexecutor: spark\n")
    out = cli("finetune", "run", str(config), code=1)
    assert "executor: Input should be 'local' or 'ray'" in out
    assert not (tmp_path / "home").exists()


def test_following_a_job_prints_the_events_written_with_its_end() -> None:
    """The server writes a job's last events in the transaction that ends it; the follower must
    print them even when the job ended between its reading the events and reading the job."""
    pending: list[TrainingEvent] = [("message", {}, "Started training at step 0 of 2")]
    statuses = iter(["running", "succeeded"])

    def refresh() -> dict[str, Any]:
        status = next(statuses)
        if status == "succeeded":
            pending.extend([("message", {}, "Registered tiny-x/1"), ("message", {}, "succeeded")])
        return {"status": status}

    def new_events() -> list[TrainingEvent]:
        fresh = list(pending)
        pending.clear()
        return fresh

    out = io.StringIO()
    job = follow_training(
        {"status": "queued"}, 2, refresh, new_events, to=Console(file=out, width=120), poll=0
    )
    assert job["status"] == "succeeded"
    printed = out.getvalue()
    assert "Started training" in printed
    assert "Registered tiny-x/1" in printed
