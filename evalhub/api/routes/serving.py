"""Backends, deployments (arms, weights, rollout, rollback) and the traffic log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from evalhub.api.deps import Editor, NamePath, PlatformDep, VersionPath, Viewer
from evalhub.monitoring.controller import check_analysis
from evalhub.monitoring.online import check_metrics
from evalhub.serving.backends import Backend, BackendCreate, BackendService
from evalhub.serving.deployments import (
    Deployment,
    DeploymentCreate,
    DeploymentService,
    DeploymentUpdate,
    RolloutAction,
)
from evalhub.serving.merge import ensure_merged
from evalhub.serving.traffic import search_traffic
from evalhub.serving.traffic_record import TrafficRecord
from registry.entities import ModelVersion, Page
from registry.errors import invalid

router = APIRouter()


def backends(request: Request) -> BackendService:
    return request.app.state.backends


@router.post("/backends", status_code=201, tags=["backends"])
def create_backend(body: BackendCreate, request: Request, principal: Editor) -> Backend:
    """Start and supervise a backend process (managed) or attach to a running server by URL."""
    service = backends(request)
    return service.with_status(service.create(body, actor=principal.name))


@router.get("/backends", tags=["backends"])
def list_backends(request: Request, _: Viewer) -> list[Backend]:
    service = backends(request)
    return [service.with_status(backend) for backend in service.list()]


@router.get("/backends/{name}", tags=["backends"])
def get_backend(name: NamePath, request: Request, _: Viewer) -> Backend:
    service = backends(request)
    backend = service.with_status(service.get(name))
    gateway = request.app.state.gateway
    loaded = sorted(gateway.loaded_adapters(name)) if gateway else []
    return backend.model_copy(update={"options": {**backend.options, "loaded_adapters": loaded}})


@router.delete("/backends/{name}", status_code=204, tags=["backends"])
def delete_backend(name: NamePath, request: Request, principal: Editor) -> Response:
    backends(request).delete(name, actor=principal.name)
    return Response(status_code=204)


@router.post("/deployments", status_code=201, tags=["deployments"])
def create_deployment(
    body: DeploymentCreate, request: Request, platform: PlatformDep, principal: Editor
) -> Deployment:
    return DeploymentService(platform).create(body, actor=principal.name)


@router.get("/deployments", tags=["deployments"])
def list_deployments(platform: PlatformDep, _: Viewer) -> list[Deployment]:
    return DeploymentService(platform).list()


@router.get("/deployments/{name}", tags=["deployments"])
def get_deployment(name: NamePath, platform: PlatformDep, _: Viewer) -> Deployment:
    return DeploymentService(platform).get(name)


@router.patch("/deployments/{name}", tags=["deployments"])
def update_deployment(
    name: NamePath,
    body: DeploymentUpdate,
    request: Request,
    platform: PlatformDep,
    principal: Editor,
) -> Deployment:
    if body.monitoring is not None:
        check_metrics(platform, body.monitoring.metrics)
    return DeploymentService(platform).update(name, body, actor=principal.name)


@router.delete("/deployments/{name}", status_code=204, tags=["deployments"])
def delete_deployment(
    name: NamePath, request: Request, platform: PlatformDep, principal: Editor
) -> Response:
    DeploymentService(platform).delete(name, actor=principal.name)
    return Response(status_code=204)


@router.post("/deployments/{name}/rollout", tags=["deployments"])
def rollout_deployment(
    name: NamePath, body: RolloutAction, request: Request, platform: PlatformDep, principal: Editor
) -> Deployment:
    """Start a rollout with steps, step to the next weight, pause, resume, or abort.

    A rollout started with an `analysis` is stepped, paused or rolled back by the rollout
    controller, which compares the candidate with the control on the analysis' guard metrics.
    """
    if body.analysis is not None:
        if body.action != "start":
            raise invalid("an analysis is given when a rollout starts")
        check_analysis(platform, body.analysis)
    return DeploymentService(platform).rollout(name, body, actor=principal.name)


@router.post("/deployments/{name}/rollback", tags=["deployments"])
def rollback_deployment(
    name: NamePath, request: Request, platform: PlatformDep, principal: Editor
) -> Deployment:
    """Restore the arms and weights the deployment had before its last change."""
    return DeploymentService(platform).rollback(name, actor=principal.name)


class MergedVersion(BaseModel):
    adapter: str
    merged: ModelVersion
    created: bool


@router.post(
    "/models/{name}/versions/{version}/merge",
    tags=["models"],
    responses={201: {"model": MergedVersion, "description": "merged by this call"}},
)
def merge_version(
    name: NamePath,
    version: VersionPath,
    response: Response,
    platform: PlatformDep,
    principal: Editor,
) -> MergedVersion:
    """The adapter merged into its base (peft `merge_and_unload`), registered once as a base
    version of `NAME-merged` with a `merged_into` lineage edge from the adapter: 201 when this
    call merged it, 200 when the merge of these exact weights already existed."""
    adapter = platform.registry.get_version(name, version)
    result = ensure_merged(platform, adapter, actor=principal.name)
    response.status_code = 201 if result.created else 200
    return MergedVersion(adapter=adapter.ref, merged=result.version, created=result.created)


@router.get("/traffic", tags=["traffic"])
def list_traffic(
    platform: PlatformDep,
    _: Viewer,
    deployment: str | None = None,
    arm: str | None = None,
    version: Annotated[str | None, Query(description="exact version ref, e.g. bot/3")] = None,
    status: Annotated[int | None, Query(ge=100, le=599)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: str | None = None,
) -> Page[TrafficRecord]:
    """The traffic log, newest first."""
    return search_traffic(
        platform.engine,
        deployment=deployment,
        arm=arm,
        version=version,
        status=status,
        limit=limit,
        page_token=page_token,
    )
