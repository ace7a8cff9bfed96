"""Experiments: a sweep of fine-tuning trials scored on a held-out suite, and its leaderboard."""

from __future__ import annotations

from fastapi import APIRouter

from evalhub.api.deps import Editor, EventsAfter, Limit, PlatformDep, Viewer
from evalhub.auth.tokens import Role
from evalhub.iteration import experiments
from evalhub.iteration.experiments import ExperimentSpec, ExperimentView
from evalhub.jobs.queue import JobEvent
from registry.entities import Page
from registry.names import PROTECTED_ALIASES

router = APIRouter(prefix="/experiments", tags=["experiments"])


@router.post("", status_code=202)
def create_experiment(
    body: ExperimentSpec, platform: PlatformDep, principal: Editor
) -> ExperimentView:
    """Checks every trial as job creation would, then queues the experiment and its trials; a
    refused experiment (400 naming the trial and option at fault) stores nothing."""
    if body.alias in PROTECTED_ALIASES:
        principal.require(Role.ADMIN, f"an experiment that moves @{body.alias}")
    job = experiments.create_experiment(platform, body, actor=principal.name)
    return experiments.view(platform, job)


@router.get("")
def list_experiments(
    platform: PlatformDep, _: Viewer, limit: Limit = 20, page_token: str | None = None
) -> Page[ExperimentView]:
    """Newest first."""
    return experiments.list_experiments(platform, limit=limit, page_token=page_token)


@router.get("/{experiment_id}")
def get_experiment(experiment_id: str, platform: PlatformDep, _: Viewer) -> ExperimentView:
    """The experiment, its trials and the leaderboard as it stands (live while trials run)."""
    return experiments.view(platform, experiments.find_experiment(platform, experiment_id))


@router.get("/{experiment_id}/events")
def list_experiment_events(
    experiment_id: str, platform: PlatformDep, _: Viewer, after: EventsAfter = None
) -> list[JobEvent]:
    """The experiment's own events (the baseline's score, waiting for trials, the winner);
    each trial's are its fine-tuning job's."""
    experiments.find_experiment(platform, experiment_id)
    return platform.jobs.events(experiment_id, after=after)


@router.post("/{experiment_id}/cancel")
def cancel_experiment(
    experiment_id: str, platform: PlatformDep, principal: Editor
) -> ExperimentView:
    """Cancels the experiment and every trial that has not ended (running ones stop at their
    next check)."""
    job = experiments.cancel_experiment(platform, experiment_id, actor=principal.name)
    return experiments.view(platform, job)
