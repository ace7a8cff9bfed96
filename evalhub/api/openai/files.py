"""`/v1/files`: upload, list, get, download and delete fine-tuning files."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel

from evalhub.api.deps import Editor, PlatformDep, Viewer
from evalhub.api.routes.uploads import uploaded_file
from evalhub.finetune import files
from evalhub.finetune.files import FileList, FileObject

router = APIRouter(prefix="/files", tags=["openai: files"])


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


@router.post("")
def create_file(
    platform: PlatformDep,
    principal: Editor,
    file: Annotated[UploadFile, File(description="A JSONL file of chat examples")],
    purpose: Annotated[str, Form(description="fine-tune")],
) -> FileObject:
    with uploaded_file(platform, file) as path:
        return files.create_file(
            platform, path, filename=file.filename, purpose=purpose, actor=principal.name
        )


@router.get("")
def list_files(
    platform: PlatformDep,
    _: Viewer,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    return files.list_files(platform, purpose=purpose, after=after, limit=limit, order=order)


@router.get("/{file_id}")
def retrieve_file(file_id: str, platform: PlatformDep, _: Viewer) -> FileObject:
    return files.get_file(platform, file_id)


@router.get("/{file_id}/content", response_class=FileResponse)
def retrieve_file_content(file_id: str, platform: PlatformDep, _: Viewer) -> FileResponse:
    entry = files.get_file(platform, file_id)
    return FileResponse(
        files.file_path(platform, file_id),
        media_type="application/octet-stream",
        filename=entry.filename,
    )


@router.delete("/{file_id}")
def delete_file(file_id: str, platform: PlatformDep, principal: Editor) -> FileDeleted:
    files.delete_file(platform, file_id, actor=principal.name)
    return FileDeleted(id=file_id)
