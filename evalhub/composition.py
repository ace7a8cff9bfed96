"""The one place that assembles a running evalhub process from Settings.

`Platform.open` builds the shared parts (engine, registry store, job queue, tokens, change bus);
this module adds what needs the capabilities: the job kinds a worker runs, and the worker
itself. The API app, the CLI and `evalhub worker` assemble themselves through it, so a new job kind
or a new subscriber to change events is added here once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from evalhub.jobs.worker import Handler, JobContext, Worker
from evalhub.monitoring.scheduler import Flush, MonitorScheduler
from evalhub.platform import Platform
from evalhub.serving.backends import BackendService
from evalhub.serving.on_demand import OnDemandBackends
from evalhub.settings import Settings


def open_platform(settings: Settings, *, upgrade: bool = True) -> Platform:
    return Platform.open(settings, upgrade=upgrade)


def job_handlers(platform: Platform) -> dict[str, Handler]:
    """Every job kind and its handler. Imported lazily: a worker pulls in torch or openai only
    when it runs such a job. Handlers use `platform`: its home, artifact store and registry."""

    def fine_tune(context: JobContext) -> dict[str, Any] | None:
        from evalhub.finetune.handler import run_fine_tune

        scorer = None
        if context.job.payload.get("eval"):
            from evalhub.iteration.checkpoints import CheckpointScorer

            scorer = CheckpointScorer(platform, context.job)
        return run_fine_tune(context, platform, scorer)

    def evaluate(context: JobContext) -> dict[str, Any] | None:
        from evalhub.eval.service import eval_handler

        return eval_handler(platform)(context)

    def experiment(context: JobContext) -> dict[str, Any] | None:
        from evalhub.iteration.experiments import run_experiment

        return run_experiment(context, platform)

    def reproduce(context: JobContext) -> dict[str, Any] | None:
        from evalhub.iteration.reproduce import run_reproduction

        return run_reproduction(context, platform)

    return {
        "fine_tune": fine_tune,
        "eval": evaluate,
        "experiment": experiment,
        "reproduce": reproduce,
    }


def monitor_scheduler(platform: Platform, flush: Flush | None = None) -> MonitorScheduler | None:
    """The scheduled monitor passes of `evalhub serve` (not started); None when turned off.
    `flush` waits for the server's traffic log (see `run_pass`)."""
    interval = platform.settings.monitor_interval
    return MonitorScheduler(platform, interval, flush) if interval > 0 else None


def on_demand_backends(backends: BackendService) -> OnDemandBackends | None:
    """The gateway's backends on demand (EVALHUB_AUTO_BACKEND); None where it is off or this
    process does not supervise managed backends."""
    settings = backends.platform.settings
    if not settings.auto_backend_enabled or backends.supervisor is None:
        return None
    return OnDemandBackends(backends, retry_seconds=settings.auto_backend_retry_seconds)


def worker(platform: Platform, **options: Any) -> Worker:
    """A worker for every job kind (not started), heartbeating as the settings say; `options`
    go to `Worker`."""
    settings = platform.settings
    options.setdefault("heartbeat_seconds", settings.worker_heartbeat_seconds)
    options.setdefault("stale_after", timedelta(seconds=settings.worker_stale_seconds))
    return Worker(platform.jobs, job_handlers(platform), **options)
