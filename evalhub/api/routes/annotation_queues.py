"""Human evaluation: annotation queues, their items, labels, exports and judge agreement."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from evalhub.annotations.service import (
    AgreementReport,
    AnnotationService,
    Item,
    Label,
    LabelCreate,
    NextItem,
    Queue,
    QueueCreate,
)
from evalhub.api.deps import Editor, Limit, NamePath, PlatformDep, Viewer
from registry.entities import DatasetVersion, Page
from registry.limits import MAX_INT64
from registry.names import NAME_PATTERN

router = APIRouter(prefix="/annotations", tags=["annotations"])

ItemPath = Annotated[int, Path(ge=1, le=MAX_INT64)]


class RegisterLabels(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(pattern=f"^{NAME_PATTERN}$", max_length=128)


class LabelsRegistered(BaseModel):
    rows: int
    created: bool = Field(description="false when the same labels were registered before")
    version: DatasetVersion


@router.post("/queues", status_code=201)
def create_queue(body: QueueCreate, platform: PlatformDep, principal: Editor) -> Queue:
    """Items are copied from an eval run's cases (a pairwise queue: two runs' answers, in a
    random order per item) or sampled from a deployment's answered requests."""
    return AnnotationService(platform).create(body, actor=principal.name)


@router.get("/queues")
def list_queues(
    platform: PlatformDep,
    _: Viewer,
    limit: Limit = 50,
    page_token: Annotated[str | None, Query(max_length=200)] = None,
) -> Page[Queue]:
    return AnnotationService(platform).search(limit=limit, page_token=page_token)


@router.get("/queues/{name}")
def get_queue(name: NamePath, platform: PlatformDep, _: Viewer) -> Queue:
    return AnnotationService(platform).get(name)


@router.delete("/queues/{name}", status_code=204)
def delete_queue(name: NamePath, platform: PlatformDep, principal: Editor) -> Response:
    """The queue with its items and labels."""
    AnnotationService(platform).delete(name, actor=principal.name)
    return Response(status_code=204)


@router.get("/queues/{name}/items")
def list_items(
    name: NamePath,
    platform: PlatformDep,
    _: Viewer,
    limit: Limit = 100,
    page_token: Annotated[str | None, Query(max_length=200)] = None,
) -> Page[Item]:
    """Every item with its labels, judge scores and which answer is which."""
    return AnnotationService(platform).items(name, limit=limit, page_token=page_token)


@router.get("/queues/{name}/next")
def next_item(name: NamePath, platform: PlatformDep, principal: Editor) -> NextItem:
    """The caller's next unlabelled item, without judge scores or other raters' labels."""
    return AnnotationService(platform).next(name, principal.name)


@router.put("/queues/{name}/items/{item_id}/label")
def label_item(
    name: NamePath, item_id: ItemPath, body: LabelCreate, platform: PlatformDep, principal: Editor
) -> Label:
    """The caller's label of the item (the token's name is the rater); again replaces it."""
    return AnnotationService(platform).label(name, item_id, body, rater=principal.name)


@router.get("/queues/{name}/agreement")
def get_agreement(name: NamePath, platform: PlatformDep, _: Viewer) -> AgreementReport:
    """Each LLM judge against the human labels, and each pair of raters: raw agreement and
    Cohen's kappa with the number of labels and a 95% interval."""
    return AnnotationService(platform).agreement(name)


@router.get("/queues/{name}/export", response_class=StreamingResponse)
def export_labels(name: NamePath, platform: PlatformDep, _: Viewer) -> StreamingResponse:
    """Every label as one JSON line, with its item's prompt and answers."""
    service = AnnotationService(platform)
    service.get(name)  # a missing queue is a 404, not an empty stream

    def lines() -> Iterator[str]:
        for record in service.export(name):
            yield json.dumps(record, ensure_ascii=False) + "\n"

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{name}-labels.jsonl"'},
    )


@router.post("/queues/{name}/register", status_code=201)
def register_labels(
    name: NamePath,
    body: RegisterLabels,
    platform: PlatformDep,
    principal: Editor,
    response: Response,
) -> LabelsRegistered:
    """The labelled items as a dataset version of eval cases, their labels under metadata."""
    version, created, rows = AnnotationService(platform).register(
        name, body.dataset, actor=principal.name
    )
    if not created:
        response.status_code = 200
    return LabelsRegistered(rows=rows, created=created, version=version)
