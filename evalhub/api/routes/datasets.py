"""Datasets and their content-addressed versions (JSONL files)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.responses import FileResponse

from evalhub.api.deps import Editor, Limit, NamePath, PlatformDep, VersionPath, Viewer
from evalhub.api.routes.uploads import uploaded_file
from evalhub.api.schemas import DatasetCreate, DatasetVersionCreated
from registry.dataset_diff import DatasetDiff
from registry.entities import Dataset, DatasetFormat, DatasetVersion, Page
from registry.errors import invalid

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", status_code=201)
def create_dataset(body: DatasetCreate, platform: PlatformDep, principal: Editor) -> Dataset:
    return platform.registry.create_dataset(
        body.name, description=body.description, tags=body.tags, actor=principal.name
    )


@router.get("")
def list_datasets(
    platform: PlatformDep, _: Viewer, limit: Limit = 50, page_token: str | None = None
) -> Page[Dataset]:
    return platform.registry.search_datasets(limit=limit, page_token=page_token)


@router.get("/{name}")
def get_dataset(name: NamePath, platform: PlatformDep, _: Viewer) -> Dataset:
    return platform.registry.get_dataset(name)


@router.post("/{name}/versions", status_code=201)
def add_dataset_version(
    name: NamePath,
    platform: PlatformDep,
    principal: Editor,
    response: Response,
    file: Annotated[UploadFile, File(description="a JSONL file")],
    format: Annotated[DatasetFormat, Form(description="chat or eval")] = DatasetFormat.CHAT,
    split: Annotated[str | None, Form(max_length=64)] = None,
    create: Annotated[bool, Form(description="create the dataset if it is missing")] = False,
) -> DatasetVersionCreated:
    """Store a JSONL file; the same content again answers 200 with the existing version."""
    if not create:
        platform.registry.get_dataset(name)
    with uploaded_file(platform, file) as path:
        version, created = platform.registry.add_dataset_version(
            name,
            path,
            format=format,
            split=split or None,
            filename=file.filename or "",
            create=create,
            actor=principal.name,
        )
    if not created:
        response.status_code = 200
    return DatasetVersionCreated(created=created, version=version)


@router.get("/{name}/versions")
def list_dataset_versions(
    name: NamePath,
    platform: PlatformDep,
    _: Viewer,
    limit: Limit = 50,
    page_token: str | None = None,
) -> Page[DatasetVersion]:
    return platform.registry.search_dataset_versions(name, limit=limit, page_token=page_token)


@router.get("/{name}/versions/{version}")
def get_dataset_version(
    name: NamePath, version: VersionPath, platform: PlatformDep, _: Viewer
) -> DatasetVersion:
    return platform.registry.get_dataset_version(name, version)


@router.get("/{name}/versions/{version}/diff")
def diff_dataset_version(
    name: NamePath,
    version: VersionPath,
    platform: PlatformDep,
    _: Viewer,
    base: Annotated[
        str | None,
        Query(max_length=300, description="the version to compare with (default: the previous)"),
    ] = None,
) -> DatasetDiff:
    """Rows added, removed and changed since `base`, and the prompts that this version answers
    in two different ways (contradictions)."""
    if base is None:
        if version == 1:
            raise invalid(f"{name}/1 is the first version: name a base to compare it with")
        base = f"{name}/{version - 1}"
    return platform.registry.diff_datasets(base, f"{name}/{version}")


@router.get("/{name}/versions/{version}/content", response_class=FileResponse)
def get_dataset_content(
    name: NamePath, version: VersionPath, platform: PlatformDep, _: Viewer
) -> FileResponse:
    entity = platform.registry.get_dataset_version(name, version)
    return FileResponse(
        platform.registry.dataset_path(entity.ref),
        media_type="application/jsonl",
        filename=entity.filename or f"{name}-{version}.jsonl",
    )
