"""Printing for the CLI: rich tables for people, JSON for scripts, one line for errors."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from evalhub.client import ApiError

console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def api_errors(code: int = 1) -> Iterator[None]:
    """Turns API errors into one clear line and a non-zero exit (`code`)."""
    try:
        yield
    except ApiError as error:
        fail(error.message, code)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    view = Table(title=title, show_lines=False)
    for column in columns:
        view.add_column(column)
    for row in rows:
        view.add_row(*(_cell(row.get(column)) for column in columns))
    console.print(view)


def fields(record: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    view = Table(show_header=False, box=None, pad_edge=False)
    view.add_column(style="bold")
    view.add_column()
    for key in keys or list(record):
        value = record.get(key)
        if value in (None, "", [], {}):
            continue
        view.add_row(key, _cell(value))
    console.print(view)


def number(value: Any) -> str:
    """A value for a table cell: floats to 4 significant digits, None as blank."""
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def byte_size(count: float | None) -> str:
    """Bytes for a table cell, in binary units: 175,081,984 -> 167.0 MiB."""
    if count is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1024
    return f"{count:,.1f} TiB"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


@contextmanager
def byte_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=errors,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


JOB_FINISHED = ("succeeded", "failed", "cancelled")

#: A training event as the follower needs it: its kind ("metrics" or other), data, message.
TrainingEvent = tuple[str, dict[str, Any], str]


def follow_training(
    job: dict[str, Any],
    total_steps: int,
    refresh: Callable[[], dict[str, Any]],
    new_events: Callable[[], Iterable[TrainingEvent]],
    *,
    to: Console = console,
    poll: float = 1.0,
) -> dict[str, Any]:
    """A progress bar with step and loss until a training job ends, other events printed above
    it; `new_events` gives the events since its last call, oldest first. Returns the ended job."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=to,
    ) as progress:
        task = progress.add_task(job["status"], total=total_steps, loss="-")
        while True:
            # The job before its events: a job's last events are written with its final status,
            # so reading them second cannot miss them.
            job = refresh()
            for kind, data, message in new_events():
                if kind == "metrics":
                    progress.update(task, completed=data["step"], loss=f"{data['train_loss']:.4f}")
                else:
                    progress.console.print(f"  {message}", highlight=False)
            progress.update(task, description=job["status"])
            if job["status"] in JOB_FINISHED:
                return job
            time.sleep(poll)
