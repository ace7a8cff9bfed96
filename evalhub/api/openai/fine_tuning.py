"""`/v1/fine_tuning/jobs`: create, list, retrieve, cancel, events and checkpoints.

evalhub's own training options (method, rank, alpha, target modules, max_steps, ...) travel in the
extra body field `evalhub`; see `evalhub.finetune.protocol.EvalhubOptions`.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query

from evalhub.api.deps import Editor, PlatformDep, Viewer
from evalhub.finetune import service
from evalhub.finetune.protocol import (
    FineTuneJobCreate,
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobEventList,
    FineTuningJobList,
)
from evalhub.iteration import checkpoints

router = APIRouter(prefix="/fine_tuning/jobs", tags=["openai: fine-tuning"])


@router.post("")
def create_fine_tuning_job(
    body: FineTuneJobCreate, platform: PlatformDep, principal: Editor
) -> FineTuningJob:
    job = service.create_job(
        platform, body, actor=principal.name, plan_eval=partial(checkpoints.plan, platform)
    )
    return service.job_view(job)


@router.get("")
def list_fine_tuning_jobs(
    platform: PlatformDep,
    _: Viewer,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> FineTuningJobList:
    return service.list_jobs(platform, after=after, limit=limit)


@router.get("/{job_id}")
def retrieve_fine_tuning_job(job_id: str, platform: PlatformDep, _: Viewer) -> FineTuningJob:
    return service.get_job(platform, job_id)


@router.post("/{job_id}/cancel")
def cancel_fine_tuning_job(job_id: str, platform: PlatformDep, principal: Editor) -> FineTuningJob:
    return service.cancel_job(platform, job_id, actor=principal.name)


@router.get("/{job_id}/events")
def list_fine_tuning_events(
    job_id: str,
    platform: PlatformDep,
    _: Viewer,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> FineTuningJobEventList:
    return service.list_events(platform, job_id, after=after, limit=limit)


@router.get("/{job_id}/checkpoints")
def list_fine_tuning_checkpoints(
    job_id: str,
    platform: PlatformDep,
    _: Viewer,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> FineTuningJobCheckpointList:
    return service.list_checkpoints(platform, job_id, after=after, limit=limit)
