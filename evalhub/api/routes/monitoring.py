"""Feedback on gateway answers, rollout decisions, and monitor passes on demand."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from evalhub.api.deps import Editor, NamePath, PlatformDep, Viewer
from evalhub.monitoring.controller import Controller, RolloutDecision
from evalhub.monitoring.drift import DriftCheck, DriftCheckCreate, DriftService
from evalhub.monitoring.export import ExportRequest, ExportResult, export
from evalhub.monitoring.feedback import Feedback, FeedbackCreate, FeedbackService
from evalhub.monitoring.scheduler import FLUSH_SECONDS, Flush, PassReport, run_pass
from registry.entities import Page

router = APIRouter()

Limit = Annotated[int, Query(ge=1, le=1000)]


def traffic_flush(request: Request) -> Flush | None:
    """This server's traffic log's flush: what it answered is in the database once it returns."""
    gateway = getattr(request.app.state, "gateway", None)
    return gateway.traffic.flush if gateway else None


def feedback_service(request: Request, platform: PlatformDep) -> FeedbackService:
    return FeedbackService(platform, flush=traffic_flush(request))


@router.post("/feedback", status_code=201, tags=["feedback"])
def post_feedback(
    body: FeedbackCreate, request: Request, platform: PlatformDep, principal: Viewer
) -> Feedback:
    """Score a gateway answer by its X-Evalhub-Request-Id; a second score of the same name for
    the same request replaces the first (`replaced` says so)."""
    return feedback_service(request, platform).post(body, actor=principal.name)


@router.get("/feedback", tags=["feedback"])
def list_feedback(
    request: Request,
    platform: PlatformDep,
    _: Viewer,
    deployment: Annotated[str | None, Query(max_length=128)] = None,
    arm: Annotated[str | None, Query(max_length=64)] = None,
    version: Annotated[str | None, Query(max_length=160, description="e.g. bot/3")] = None,
    name: Annotated[str | None, Query(max_length=64)] = None,
    request_id: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 100,
    page_token: Annotated[str | None, Query(max_length=200)] = None,
) -> Page[Feedback]:
    """Newest first."""
    return feedback_service(request, platform).search(
        deployment=deployment,
        arm=arm,
        version=version,
        name=name,
        request_id=request_id,
        since=since,
        until=until,
        limit=limit,
        page_token=page_token,
    )


@router.get("/deployments/{name}/decisions", tags=["deployments"])
def list_decisions(
    name: NamePath,
    platform: PlatformDep,
    _: Viewer,
    limit: Limit = 100,
    page_token: Annotated[str | None, Query(max_length=200)] = None,
) -> Page[RolloutDecision]:
    """The rollout controller's decisions, newest first, each with its numbers and reason."""
    return Controller(platform).decisions(name, limit=limit, page_token=page_token)


class MonitorRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployment: str | None = Field(default=None, max_length=128)


@router.post("/monitors/run", tags=["monitors"])
def run_monitors(
    body: MonitorRun, request: Request, platform: PlatformDep, _: Editor
) -> PassReport:
    """One monitor pass now: score sampled traffic, decide every rollout under analysis, then
    evaluate the alert rules (and deliver what fires).

    It sees every request this server answered before the pass began."""
    return run_pass(platform, body.deployment, flush=traffic_flush(request))


@router.post("/monitors/drift", status_code=201, tags=["monitors"])
def run_drift_check(
    body: DriftCheckCreate, request: Request, platform: PlatformDep, principal: Editor
) -> DriftCheck:
    """Compare a current window of a deployment's traffic with a reference window or dataset:
    per column method, score, threshold and verdict, and Evidently's HTML report."""
    flush = traffic_flush(request)
    if flush is not None:
        flush(FLUSH_SECONDS)
    return DriftService(platform).run(body, actor=principal.name)


@router.get("/monitors/drift", tags=["monitors"])
def list_drift_checks(
    platform: PlatformDep,
    _: Viewer,
    deployment: Annotated[str | None, Query(max_length=128)] = None,
    limit: Limit = 50,
    page_token: Annotated[str | None, Query(max_length=200)] = None,
) -> Page[DriftCheck]:
    """Newest first."""
    return DriftService(platform).search(deployment=deployment, limit=limit, page_token=page_token)


@router.get("/monitors/drift/{check_id}", tags=["monitors"])
def get_drift_check(
    check_id: Annotated[str, Path(max_length=40)], platform: PlatformDep, _: Viewer
) -> DriftCheck:
    return DriftService(platform).get(check_id)


@router.get(
    "/monitors/drift/{check_id}/report",
    tags=["monitors"],
    response_class=Response,
    responses={200: {"content": {"text/html": {}}, "description": "Evidently's HTML report"}},
)
def get_drift_report(
    check_id: Annotated[str, Path(max_length=40)], platform: PlatformDep, _: Viewer
) -> Response:
    """Evidently's self-contained HTML report of the check (renders offline)."""
    return Response(DriftService(platform).report(check_id), media_type="text/html")


@router.post("/monitors/export", status_code=201, tags=["monitors"])
def export_traffic(body: ExportRequest, platform: PlatformDep, principal: Editor) -> ExportResult:
    """Register a deployment's requests (with negative feedback, or of a drift check's window)
    as a dataset version of eval cases or chat rows, each carrying its request id."""
    return export(platform, body, actor=principal.name)
