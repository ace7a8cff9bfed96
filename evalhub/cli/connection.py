"""The CLI's connection to the server, with a local worker for jobs in in-process mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from evalhub.cli.output import api_errors
from evalhub.client import Client
from evalhub.settings import Settings


@contextmanager
def connected(settings: Settings, worker: bool = False, error_code: int = 1) -> Iterator[Client]:
    """A client; without EVALHUB_URL (in-process mode) optionally a local worker that runs jobs.
    An API error ends the command with one line and exit status `error_code`."""
    with api_errors(error_code), Client.connect(settings, worker=worker) as client:
        yield client
