"""Annotation queues, their items and the human labels on them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from registry.tables import UTCDateTime, utcnow


def _time() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class AnnotationQueueRow(SQLModel, table=True):
    __tablename__ = "annotation_queues"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True, index=True)
    description: str = Field(default="", sa_column=Column(Text, nullable=False))
    kind: str = Field(max_length=16, description="scale, labels or pairwise")
    rubric: dict[str, Any] = _json()
    source: dict[str, Any] = _json()
    created_at: datetime = _time()
    created_by: str = Field(default="", max_length=128)


class AnnotationItemRow(SQLModel, table=True):
    __tablename__ = "annotation_items"
    __table_args__ = (Index("ix_annotation_items_queue", "queue_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    queue_id: int = Field(foreign_key="annotation_queues.id")
    position: int
    source_id: str = Field(max_length=256, description="the eval case id or gateway request id")
    prompt: list[dict[str, Any]] = Field(
        default_factory=list,
        sa_column=Column(JSON, nullable=False),
        description="the chat messages (or one user message) that were answered",
    )
    output: str = Field(sa_column=Column(Text, nullable=False), description="the candidate's")
    other: str | None = Field(
        default=None, sa_column=Column(Text, nullable=True), description="the baseline's"
    )
    swapped: bool = Field(default=False, description="pairwise: the baseline is shown first")
    reference: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    judges: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False),
        description="each llm_judge metric's score of this item (0-1), by metric name",
    )
    details: dict[str, Any] = _json()


class AnnotationLabelRow(SQLModel, table=True):
    __tablename__ = "annotation_labels"
    __table_args__ = (
        UniqueConstraint("item_id", "rater", name="uq_annotation_labels_item_rater"),
        Index("ix_annotation_labels_queue", "queue_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    queue_id: int = Field(foreign_key="annotation_queues.id")
    item_id: int = Field(foreign_key="annotation_items.id")
    rater: str = Field(max_length=128)
    value: str = Field(
        max_length=64, description="a scale point, a label, or candidate, baseline or tie"
    )
    comment: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = _time()
