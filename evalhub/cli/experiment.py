"""`evalhub experiment run|list|show|compare|cancel`: sweeps of fine-tuning trials ranked on a
held-out suite, through /api/v1/experiments."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evalhub.cli.connection import connected
from evalhub.cli.finetune import show_comparison
from evalhub.cli.output import (
    JOB_FINISHED,
    byte_size,
    console,
    fail,
    fields,
    number,
    print_json,
    table,
)
from evalhub.client import Client
from evalhub.settings import Settings

experiment_app = typer.Typer(
    help="Experiments: sweeps of fine-tuning trials ranked on a held-out suite.",
    no_args_is_help=True,
)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def load_sweep(path: Path) -> dict[str, Any]:
    """The sweep YAML as the API takes it: `suite` names a file (relative to the YAML), which is
    sent as text."""
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as error:
        fail(f"{path}: {error.strerror or error}")
    except yaml.YAMLError as error:
        fail(f"{path} is not valid YAML: {error}")
    if not isinstance(spec, dict):
        fail(f"{path}: expected a mapping of experiment fields, got {type(spec).__name__}")
    suite = spec.get("suite")
    if not isinstance(suite, str):
        fail(f"{path}: suite must name the suite's YAML file")
    suite_path = Path(suite) if Path(suite).is_absolute() else path.parent / suite
    if not suite_path.is_file():
        fail(f"{path}: suite {suite_path} is not a file")
    return {**spec, "suite": suite_path.read_text()}


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={number(value)}" for key, value in params.items())


def interval(comparison: dict[str, Any] | None) -> str:
    """`+0.85 [+0.69, +0.93]`: the difference and its interval."""
    if not comparison or comparison.get("difference") is None:
        return ""
    low, high = comparison["ci_low"], comparison["ci_high"]
    return f"{comparison['difference']:+.2f} [{low:+.2f}, {high:+.2f}]"


def show_leaderboard(experiment: dict[str, Any]) -> None:
    board = experiment["leaderboard"]
    metric = board["metric"]
    title = (
        f"{experiment['name']} ({experiment['id']}): {metric} on the suite, "
        f"baseline {board['baseline']} = {number(board['baseline_value'])}"
    )
    columns = ["rank", "trial", "params", metric, "vs baseline, 95% CI", "vs best", "version@step"]
    rows: list[list[str]] = []
    for row in board["trials"]:
        if row["best"]:
            versus_best = "best"
        elif row["vs_best"] is None:
            versus_best = ""
        else:
            versus_best = "tied" if row["tied_with_best"] else "worse"
        outcome = number(row["value"]) if row["value"] is not None else row["status"]
        if row["error"]:
            outcome = f"{row['status']}: {row['error']}"
        rows.append([
            number(row["rank"]),
            str(row["trial"]),
            params_text(row["params"]),
            outcome,
            interval(row["vs_baseline"]),
            versus_best,
            f"{row['version']}@{row['selected_step']}" if row["version"] else "",
        ])  # fmt: skip
    # Values keep their width and headers wrap, so a narrow terminal folds a header, not a number.
    view = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for index, column in enumerate(columns):
        widest = max((len(cells[index]) for cells in rows), default=0)
        view.add_column(column, min_width=min(widest, 24 if column == "params" else 40))
    for cells in rows:
        view.add_row(*cells)
    console.print(view)
    priced = any(row["cost"] is not None for row in board["trials"])
    spent = [
        {
            "trial": row["trial"],
            "train s": number(row["train_seconds"]),
            "tokens": number(row["trained_tokens"]),
            "memory est.": byte_size(row["memory_estimate_bytes"]),
            "cost": number(row["cost"]),
        }
        for row in board["trials"]
    ]
    columns = ["trial", "train s", "tokens", "memory est.", *(["cost"] if priced else [])]
    table(spent, columns, "what each trial took")
    best = next((row for row in board["trials"] if row["best"]), None)
    if best is not None:
        console.print(
            f"where the best trial still fails: evalhub eval errors {best['run_id']}",
            highlight=False,
        )
    others = [m for row in board["trials"] for m in row["metrics"] if m != metric]
    if others:
        scores = [
            {"trial": row["trial"], **{m: number(v) for m, v in row["metrics"].items()}}
            for row in board["trials"]
            if row["metrics"]
        ]
        table(scores, ["trial", metric, *dict.fromkeys(others)], "every metric of the suite")


def follow(client: Client, experiment_id: str, poll: float = 1.0) -> dict[str, Any]:
    """A progress bar of finished trials; each trial's outcome prints as it ends."""
    experiment = client.get(f"/experiments/{experiment_id}")
    reported: set[int] = set()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("trials"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(experiment["status"], total=experiment["trials_total"])
        while True:
            board = {row["trial"]: row for row in experiment["leaderboard"]["trials"]}
            for trial in experiment["trials"]:
                if trial["status"] not in JOB_FINISHED or trial["trial"] in reported:
                    continue
                reported.add(trial["trial"])
                row = board[trial["trial"]]
                outcome = row["error"] or trial["status"]
                if row["value"] is not None:
                    outcome = (
                        f"{experiment['metric']} {number(row['value'])} at step "
                        f"{row['selected_step']} ({row['version']})"
                    )
                progress.console.print(
                    f"  trial {trial['trial']} ({params_text(trial['params'])}): {outcome}",
                    highlight=False,
                )
            progress.update(
                task, completed=experiment["trials_finished"], description=experiment["status"]
            )
            if experiment["status"] in JOB_FINISHED:
                return experiment
            time.sleep(poll)
            experiment = client.get(f"/experiments/{experiment_id}")


@experiment_app.command("run")
def run(
    sweep: Annotated[Path, typer.Argument(metavar="SWEEP.yaml", help="The experiment, as YAML")],
    detach: Annotated[bool, typer.Option(help="Create the experiment and return at once.")] = False,
) -> None:
    """Queue the trials, follow them, print the leaderboard (exit 1 unless it succeeds)."""
    spec = load_sweep(sweep)
    with connected(Settings(), worker=not detach) as client:
        experiment = client.post("/experiments", spec)
        console.print(
            f"created [bold]{experiment['id']}[/]: {experiment['trials_total']} trials "
            f"({experiment['search']}), ranked by {experiment['metric']} against "
            f"{experiment['baseline']}"
        )
        if detach:
            return
        try:
            experiment = follow(client, experiment["id"])
        except KeyboardInterrupt:
            fail(
                f"stopped following; cancel with `evalhub experiment cancel {experiment['id']}`",
                130,
            )
    show_leaderboard(experiment)
    if experiment["status"] != "succeeded":
        fail(f"experiment {experiment['id']} {experiment['status']}: {experiment['error'] or ''}")
    console.print(
        f"winner: {experiment['winner']}, now {experiment['output_model']}@{experiment['alias']}"
    )


@experiment_app.command("list")
def list_experiments(as_json: JsonFlag = False) -> None:
    """Experiments, newest first."""
    with connected(Settings()) as client:
        rows = client.get("/experiments", limit=100)["data"]
    if as_json:
        print_json(rows)
        return
    columns = ["id", "name", "status", "metric", "trials_finished", "trials_total", "winner"]
    table(rows, columns, "experiments")


@experiment_app.command("show")
def show(experiment_id: str, as_json: JsonFlag = False) -> None:
    """An experiment and its leaderboard (live while its trials run)."""
    with connected(Settings()) as client:
        experiment = client.get(f"/experiments/{experiment_id}")
    if as_json:
        print_json(experiment)
        return
    keys = ["id", "status", "base", "baseline", "search", "output_model", "alias", "winner"]
    fields(experiment, [*keys, "error"])
    show_leaderboard(experiment)


@experiment_app.command("compare")
def compare(
    experiment_id: str,
    top: Annotated[int, typer.Option(min=2, max=10, help="How many of the best trials")] = 4,
    as_json: JsonFlag = False,
) -> None:
    """The best trials side by side: options (those that differ marked *) and results."""
    with connected(Settings()) as client:
        experiment = client.get(f"/experiments/{experiment_id}")
        ranked = [row for row in experiment["leaderboard"]["trials"] if row["rank"]][:top]
        if len(ranked) < 2:
            fail(f"experiment {experiment_id} has {len(ranked)} scored trials; compare needs 2")
        comparison = client.get("/finetune/runs/compare", job=[row["job_id"] for row in ranked])
    if as_json:
        print_json(comparison)
        return
    headers = [f"#{row['rank']} trial {row['trial']}" for row in ranked]
    show_comparison(comparison, headers, f"{experiment['name']}: the best {len(ranked)} trials")


@experiment_app.command("cancel")
def cancel(experiment_id: str) -> None:
    """Cancel the experiment and every trial that has not ended."""
    with connected(Settings()) as client:
        experiment = client.post(f"/experiments/{experiment_id}/cancel")
    console.print(f"{experiment['id']}: {experiment['status']}")
