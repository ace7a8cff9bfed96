"""Printing for the CLI: rich tables for people, JSON for scripts, one line for errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
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
def api_errors() -> Iterator[None]:
    """Turns API errors into one clear line and a non-zero exit."""
    try:
        yield
    except ApiError as error:
        fail(error.message)


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
