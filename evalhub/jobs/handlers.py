"""Which handler runs which kind of job. Each capability adds its kind here."""

from __future__ import annotations

from evalhub.jobs.worker import Handler


def default_handlers() -> dict[str, Handler]:
    """Imported lazily: a worker pulls in torch or openai only when it starts."""
    handlers: dict[str, Handler] = {}
    return handlers
