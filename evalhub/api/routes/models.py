"""Registered models and their versions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from pydantic import TypeAdapter

from evalhub.api.deps import Admin, Editor, Limit, NamePath, PlatformDep, VersionPath, Viewer
from evalhub.api.routes.uploads import uploaded_directory
from evalhub.api.schemas import ModelCreate, ModelUpdate, VersionUpdate
from registry import json_limits
from registry.entities import (
    Lineage,
    LineageInput,
    ModelKind,
    ModelVersion,
    Page,
    RegisteredModel,
    VersionStatus,
)
from registry.errors import invalid
from registry.limits import Tags

router = APIRouter(prefix="/models", tags=["models"])

_TAGS: TypeAdapter[dict[str, str]] = TypeAdapter(Tags)


@router.post("", status_code=201)
def create_model(body: ModelCreate, platform: PlatformDep, principal: Editor) -> RegisteredModel:
    return platform.registry.create_model(
        body.name, body.kind, description=body.description, tags=body.tags, actor=principal.name
    )


@router.get("")
def list_models(
    platform: PlatformDep,
    _: Viewer,
    limit: Limit = 50,
    page_token: str | None = None,
    kind: ModelKind | None = None,
    q: Annotated[str | None, Query(description="part of the name")] = None,
) -> Page[RegisteredModel]:
    return platform.registry.search_models(
        limit=limit, page_token=page_token, kind=kind, name_contains=q
    )


@router.get("/{name}")
def get_model(name: NamePath, platform: PlatformDep, _: Viewer) -> RegisteredModel:
    return platform.registry.get_model(name)


@router.patch("/{name}")
def update_model(
    name: NamePath, body: ModelUpdate, platform: PlatformDep, principal: Editor
) -> RegisteredModel:
    return platform.registry.update_model(
        name, description=body.description, tags=body.tags, actor=principal.name
    )


@router.delete("/{name}", status_code=204)
def delete_model(name: NamePath, platform: PlatformDep, principal: Admin) -> Response:
    platform.registry.delete_model(name, actor=principal.name)
    return Response(status_code=204)


@router.post("/{name}/versions", status_code=201)
def register_version(
    name: NamePath,
    platform: PlatformDep,
    principal: Editor,
    file: Annotated[UploadFile | None, File(description="tar or zip of the directory")] = None,
    path: Annotated[str | None, Form(description="server-side directory, if allowed")] = None,
    base: Annotated[str | None, Form(description="base version ref, for adapters")] = None,
    description: Annotated[str, Form(max_length=10_000)] = "",
    source: Annotated[
        str | None, Form(max_length=1_000, description="where the files came from, for people")
    ] = None,
    tags: Annotated[str | None, Form(description="JSON object")] = None,
    lineage: Annotated[str | None, Form(description="JSON LineageInput")] = None,
) -> ModelVersion:
    """Register a model or PEFT adapter directory as the next version of `name`."""
    platform.registry.get_model(name)  # fail fast, before unpacking anything
    parsed_tags = _TAGS.validate_python(_json_form("tags", tags, dict) or {})
    parsed_lineage = LineageInput.model_validate(_json_form("lineage", lineage, dict) or {})
    with uploaded_directory(platform, file, path) as directory:
        return platform.registry.register_version(
            name,
            directory,
            base=base,
            description=description,
            tags=parsed_tags,
            source=path or source or f"upload:{file.filename if file else ''}",
            lineage=parsed_lineage,
            actor=principal.name,
        )


@router.get("/{name}/versions")
def list_versions(
    name: NamePath,
    platform: PlatformDep,
    _: Viewer,
    limit: Limit = 50,
    page_token: str | None = None,
    status: VersionStatus | None = None,
) -> Page[ModelVersion]:
    return platform.registry.search_versions(
        name, limit=limit, page_token=page_token, status=status
    )


@router.get("/{name}/versions/{version}")
def get_version(
    name: NamePath, version: VersionPath, platform: PlatformDep, _: Viewer
) -> ModelVersion:
    return platform.registry.get_version(name, version)


@router.patch("/{name}/versions/{version}")
def update_version(
    name: NamePath,
    version: VersionPath,
    body: VersionUpdate,
    platform: PlatformDep,
    principal: Editor,
) -> ModelVersion:
    return platform.registry.update_version(
        name,
        version,
        description=body.description,
        tags=body.tags,
        status=body.status,
        metrics=body.metrics,
        actor=principal.name,
    )


@router.get("/{name}/versions/{version}/lineage")
def get_lineage(name: NamePath, version: VersionPath, platform: PlatformDep, _: Viewer) -> Lineage:
    return platform.registry.lineage(name, version)


def _json_form(field: str, value: str | None, kind: type) -> Any:
    if value is None or value == "":
        return None
    try:
        parsed = json_limits.loads(value)
    except ValueError as error:
        raise invalid(f"form field {field!r} is not valid JSON: {error}") from error
    if not isinstance(parsed, kind):
        raise invalid(f"form field {field!r} must be a JSON {kind.__name__}")
    return parsed
