"""Job state lives in the database, so an acknowledged job survives any process."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from registry.tables import UTCDateTime, utcnow


def _time(nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class JobRow(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "status", "kind", "id"),)

    id: str = Field(primary_key=True, max_length=64)
    seq: int | None = Field(default=None, index=True, description="submission order")
    kind: str = Field(max_length=32, index=True)
    status: str = Field(max_length=16)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    error: str | None = None
    created_by: str = Field(default="", max_length=128)
    created_at: datetime = _time()
    started_at: datetime | None = _time(nullable=True)
    finished_at: datetime | None = _time(nullable=True)
    heartbeat_at: datetime | None = _time(nullable=True)
    worker_id: str | None = Field(default=None, max_length=128)
    attempts: int = 0
    cancel_requested: bool = False


class JobEventRow(SQLModel, table=True):
    __tablename__ = "job_events"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=64)
    created_at: datetime = _time()
    level: str = Field(default="info", max_length=16)
    message: str
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
