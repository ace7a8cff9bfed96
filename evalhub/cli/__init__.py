"""The `evalhub` command line: one Typer app, a sub-app per resource."""

from evalhub.cli.main import app

__all__ = ["app"]
