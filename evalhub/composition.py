"""The one place that assembles a running evalhub process from Settings.

`Platform.open` builds the shared parts (engine, registry store, job queue, tokens, change bus);
this module adds what needs the capabilities: the job kinds a worker runs, and the worker
itself. The API app, the CLI and `evalhub worker` assemble themselves through it, so a new job kind
or a new subscriber to change events is added here once.
"""

from __future__ import annotations

from typing import Any

from evalhub.jobs.worker import Handler, JobContext, Worker
from evalhub.monitoring.scheduler import Flush, MonitorScheduler
from evalhub.platform import Platform
from evalhub.settings import Settings


def open_platform(settings: Settings, *, upgrade: bool = True) -> Platform:
    return Platform.open(settings, upgrade=upgrade)


def job_handlers(platform: Platform) -> dict[str, Handler]:
    """Every job kind and its handler. Imported lazily: a worker pulls in torch or openai only
    when it runs such a job. Handlers use `platform`: its home, artifact store and registry."""

    def fine_tune(context: JobContext) -> dict[str, Any] | None:
        from evalhub.finetune.handler import run_fine_tune

        return run_fine_tune(context, platform)

    def evaluate(context: JobContext) -> dict[str, Any] | None:
        from evalhub.eval.service import eval_handler

        return eval_handler(platform)(context)

    return {"fine_tune": fine_tune, "eval": evaluate}


def monitor_scheduler(platform: Platform, flush: Flush | None = None) -> MonitorScheduler | None:
    """The scheduled monitor passes of `evalhub serve` (not started); None when turned off.
    `flush` waits for the server's traffic log (see `run_pass`)."""
    interval = platform.settings.monitor_interval
    return MonitorScheduler(platform, interval, flush) if interval > 0 else None


def worker(platform: Platform, **options: Any) -> Worker:
    """A worker for every job kind (not started); `options` go to `Worker`."""
    return Worker(platform.jobs, job_handlers(platform), **options)
