"""Drift checks (their summary and report) and the prompt embeddings they reuse."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary
from sqlmodel import Field, SQLModel

from registry.tables import UTCDateTime, utcnow


class DriftCheckRow(SQLModel, table=True):
    __tablename__ = "drift_checks"
    __table_args__ = (Index("ix_drift_checks_deployment_time", "deployment", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    seq: int = Field(index=True, description="creation order, for paging")
    deployment: str = Field(max_length=128)
    arm: str | None = Field(default=None, max_length=64)
    reference: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    current: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    summary: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    drifted: bool
    share_drifted: float
    report_digest: str | None = Field(default=None, max_length=80)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    created_by: str = Field(default="", max_length=128)


class PromptEmbeddingRow(SQLModel, table=True):
    """A traffic record's prompt embedded once (MiniLM, float32), then reused by every check."""

    __tablename__ = "prompt_embeddings"

    request_id: str = Field(primary_key=True, max_length=64)
    model: str = Field(max_length=80)
    vector: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
