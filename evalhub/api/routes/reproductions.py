"""Reproductions: retrain a registered fine-tuned version from its lineage and compare digests."""

from __future__ import annotations

from fastapi import APIRouter

from evalhub.api.deps import Editor, EventsAfter, NamePath, PlatformDep, VersionPath, Viewer
from evalhub.iteration import reproduce
from evalhub.iteration.reproduce import ReproduceRequest, Reproduction
from evalhub.jobs.queue import JobEvent

router = APIRouter(tags=["reproductions"])


@router.post("/models/{name}/versions/{version}/reproduce", status_code=202)
def reproduce_version(
    name: NamePath,
    version: VersionPath,
    platform: PlatformDep,
    principal: Editor,
    body: ReproduceRequest | None = None,
) -> Reproduction:
    """Queues a retraining of the version as its lineage records it (with `overrides`, as
    changed); the finished job's `report` says whether the files are bit-identical and what
    differs. Nothing is registered. A version no fine-tuning job trained answers 400."""
    return reproduce.submit(platform, f"{name}/{version}", body, actor=principal.name)


@router.get("/reproductions/{job_id}")
def get_reproduction(job_id: str, platform: PlatformDep, _: Viewer) -> Reproduction:
    return reproduce.get(platform, job_id)


@router.get("/reproductions/{job_id}/events")
def list_reproduction_events(
    job_id: str, platform: PlatformDep, _: Viewer, after: EventsAfter = None
) -> list[JobEvent]:
    return reproduce.events(platform, job_id, after=after)
