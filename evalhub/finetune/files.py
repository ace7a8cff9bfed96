"""Uploaded files (OpenAI's Files API): metadata in the database, bytes in the artifact store.

Content is stored by digest, so the same file uploaded twice costs its bytes once; deleting a file
removes its record only, since dataset versions made from it may share the blob.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import Session, col, select

from evalhub.finetune.errors import bad_param, missing
from evalhub.finetune.tables import FileRow
from evalhub.platform import Platform
from registry.db import writer
from registry.entities import Mutation
from registry.paging import fetch_page

PURPOSES = ("fine-tune",)
MAX_FILENAME = 256


class FileObject(BaseModel):
    """OpenAI's `file` object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None
    digest: str


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


def timestamp(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _entity(row: FileRow) -> FileObject:
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=timestamp(row.created_at) or 0,
        filename=row.filename,
        purpose=row.purpose,
        digest=row.digest,
    )


def clean_filename(filename: str | None) -> str:
    """Only the last path component is kept: a filename is a label, never a path."""
    name = Path((filename or "").replace("\\", "/")).name.strip()
    if not name or len(name) > MAX_FILENAME:
        raise bad_param("file", f"the file needs a name of 1 to {MAX_FILENAME} characters")
    return name


def create_file(
    platform: Platform, path: Path, *, filename: str | None, purpose: str, actor: str = ""
) -> FileObject:
    """Store the bytes at `path` (already size-checked while receiving) and record the file."""
    if purpose not in PURPOSES:
        raise bad_param(
            "purpose", f"purpose {purpose!r} is not supported; use one of {', '.join(PURPOSES)}"
        )
    name = clean_filename(filename)
    if path.stat().st_size == 0:
        raise bad_param("file", f"{name} is empty")
    stored = platform.registry.artifacts.put_file(path)
    with Session(writer(platform.engine), expire_on_commit=False) as session:
        seq = session.exec(select(func.max(FileRow.seq))).one() or 0
        row = FileRow(
            id=f"file-{secrets.token_hex(12)}",
            seq=seq + 1,
            filename=name,
            purpose=purpose,
            bytes=stored.size_bytes,
            digest=stored.digest,
            created_by=actor,
        )
        session.add(row)
        session.flush()
        entity = _entity(row)
        platform.events.record(
            session,
            Mutation(
                actor=actor,
                action="file.create",
                resource=f"files/{row.id}",
                after=entity.model_dump(),
            ),
        )
        session.commit()
    return entity


def get_file(platform: Platform, file_id: str, param: str = "file_id") -> FileObject:
    with Session(platform.engine) as session:
        row = session.get(FileRow, file_id)
        if row is None:
            raise missing(param, f"no file {file_id!r}; upload it first (POST /v1/files)")
        return _entity(row)


def list_files(
    platform: Platform,
    *,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    """OpenAI's cursor paging: `after` is the id of the last file of the previous page."""
    query = select(FileRow)
    if purpose:
        query = query.where(FileRow.purpose == purpose)
    with Session(platform.engine) as session:
        if after:
            cursor = session.get(FileRow, after)
            if cursor is None:
                raise bad_param("after", f"no file {after!r} to page after")
            newer = col(FileRow.seq) > cursor.seq
            query = query.where(newer if order == "asc" else col(FileRow.seq) < cursor.seq)
        ordering = col(FileRow.seq) if order == "asc" else col(FileRow.seq).desc()
        rows, more = fetch_page(session, query.order_by(ordering), limit)
    data = [_entity(row) for row in rows]
    return FileList(
        data=data,
        has_more=more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


def file_path(platform: Platform, file_id: str, param: str = "file_id") -> Path:
    """A local, digest-verified copy of the file's bytes."""
    return platform.registry.artifacts.blob_path(get_file(platform, file_id, param).digest)


def delete_file(platform: Platform, file_id: str, *, actor: str = "") -> None:
    with Session(writer(platform.engine)) as session:
        row = session.get(FileRow, file_id)
        if row is None:
            raise missing("file_id", f"no file {file_id!r}")
        before = _entity(row).model_dump()
        session.delete(row)
        platform.events.record(
            session,
            Mutation(actor=actor, action="file.delete", resource=f"files/{file_id}", before=before),
        )
        session.commit()
