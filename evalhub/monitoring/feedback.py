"""User feedback on gateway answers, linked by the gateway's request id to the traffic record and
so to the deployment, arm and exact model version that answered."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import Session, col, select

from evalhub.monitoring.tables import FeedbackRow
from evalhub.platform import Platform
from evalhub.serving.tables import TrafficRow
from registry.db import writer
from registry.entities import Mutation, Page
from registry.errors import invalid, not_found
from registry.paging import decode_page_token, fetch_page, page_of
from registry.tables import utcnow

#: Seconds to wait for the traffic log to store a record that a client already has the id of.
FLUSH_SECONDS = 5.0


class FeedbackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(max_length=64, description="the gateway's X-Evalhub-Request-Id")
    score: float = Field(description="1 or 0 for thumbs; else a number on the name's scale")
    name: str = Field(default="thumbs", pattern=r"^[a-z][a-z0-9_.-]{0,63}$")
    comment: str | None = Field(default=None, max_length=4000)
    user: str | None = Field(default=None, max_length=256)

    @field_validator("score")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("score must be a finite number")
        return value


class Feedback(BaseModel):
    id: int
    request_id: str
    name: str
    score: float
    comment: str | None
    user: str | None
    deployment: str | None
    arm: str | None
    version: str | None
    created_at: datetime
    created_by: str
    replaced: bool = Field(
        default=False, description="a score of this name for this request was replaced"
    )


class FeedbackService:
    def __init__(self, platform: Platform, flush: Callable[[float], bool] | None = None) -> None:
        """`flush` waits for the traffic log to store what it has journaled: feedback may arrive
        before the record of the answer it is about is in the database."""
        self.platform = platform
        self.flush = flush

    def post(self, body: FeedbackCreate, *, actor: str) -> Feedback:
        scales = self.platform.settings.feedback_scales
        scale = scales.get(body.name)
        if scale is None:
            raise invalid(
                f"feedback {body.name!r} has no declared scale; declared: {sorted(scales)} "
                "(EVALHUB_FEEDBACK_SCALES)"
            )
        low, high = scale
        if not low <= body.score <= high:
            raise invalid(f"feedback {body.name!r} is scored from {low:g} to {high:g}")
        if body.name == "thumbs" and body.score not in (0, 1):
            raise invalid("thumbs feedback is 1 (up) or 0 (down)")
        traffic = self._traffic(body.request_id)
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            row = session.exec(
                select(FeedbackRow).where(
                    FeedbackRow.request_id == body.request_id, FeedbackRow.name == body.name
                )
            ).first()
            before = _view(row).model_dump(mode="json") if row is not None else None
            if row is None:
                row = FeedbackRow(
                    request_id=body.request_id,
                    name=body.name,
                    score=body.score,
                    deployment=traffic.deployment,
                    arm=traffic.arm,
                    version=traffic.version,
                    created_by=actor,
                )
            row.score, row.comment, row.user = body.score, body.comment, body.user
            row.created_at, row.created_by = utcnow(), actor
            session.add(row)
            session.flush()
            view = _view(row).model_copy(update={"replaced": before is not None})
            self.platform.events.record(
                session,
                Mutation(
                    actor=actor,
                    action="feedback.replace" if before else "feedback.create",
                    resource=f"feedback/{body.request_id}/{body.name}",
                    before=before,
                    after=view.model_dump(mode="json"),
                ),
            )
            session.commit()
        return view

    def _traffic(self, request_id: str) -> TrafficRow:
        row = self._find_traffic(request_id)
        if row is None and self.flush is not None and self.flush(FLUSH_SECONDS):
            row = self._find_traffic(request_id)
        if row is None:
            raise not_found(f"no gateway request {request_id!r} in the traffic log")
        return row

    def _find_traffic(self, request_id: str) -> TrafficRow | None:
        with Session(self.platform.engine) as session:
            return session.get(TrafficRow, request_id)

    def search(
        self,
        *,
        deployment: str | None = None,
        arm: str | None = None,
        version: str | None = None,
        name: str | None = None,
        request_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        page_token: str | None = None,
    ) -> Page[Feedback]:
        """Newest first."""
        query = select(FeedbackRow)
        for column, value in (
            (FeedbackRow.deployment, deployment),
            (FeedbackRow.arm, arm),
            (FeedbackRow.version, version),
            (FeedbackRow.name, name),
            (FeedbackRow.request_id, request_id),
        ):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(col(FeedbackRow.created_at) >= since)
        if until is not None:
            query = query.where(col(FeedbackRow.created_at) < until)
        after = decode_page_token(page_token)
        if after is not None:
            query = query.where(col(FeedbackRow.id) < after)
        with Session(self.platform.engine) as session:
            rows, more = fetch_page(session, query.order_by(col(FeedbackRow.id).desc()), limit)
        return page_of(rows, more, _view)


def _view(row: FeedbackRow) -> Feedback:
    return Feedback.model_validate(row, from_attributes=True)
