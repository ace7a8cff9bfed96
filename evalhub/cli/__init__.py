"""The `evalhub` command line: one Typer app, a sub-app per resource."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from evalhub.cli.main import app
from evalhub.settings import settings_problems

__all__ = ["app", "main"]


def main() -> None:
    """The `evalhub` command: a setting that cannot be read is one clear message, not a
    traceback, whichever command met it."""
    try:
        app(prog_name="evalhub")
    except ValidationError as error:
        if error.title != "Settings":
            raise
        print(f"error: {settings_problems(error)}", file=sys.stderr)
        sys.exit(2)
