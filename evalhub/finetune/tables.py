"""Tables of the fine-tuning service: uploaded files and the checkpoints of fine-tuning jobs.

The jobs themselves live in the job queue's tables (kind "fine_tune"); these hold what the OpenAI
API lists besides jobs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from registry.tables import UTCDateTime, utcnow


class FileRow(SQLModel, table=True):
    """An uploaded file; its bytes sit in the artifact store under `digest`."""

    __tablename__ = "files"

    id: str = Field(primary_key=True, max_length=64)
    seq: int | None = Field(default=None, index=True, description="upload order, for paging")
    filename: str = Field(max_length=256)
    purpose: str = Field(max_length=32, index=True)
    bytes: int = Field(sa_column=Column(BigInteger(), nullable=False))
    digest: str = Field(max_length=80)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    created_by: str = Field(default="", max_length=128)


class FineTuneCheckpointRow(SQLModel, table=True):
    """A resumable checkpoint a fine-tuning job saved under its worker's EVALHUB_HOME/jobs/<job id>/
    (`path`), and, where checkpoints are stored, its tree in the artifact store (`digest`), from
    which a worker on another machine resumes the job."""

    __tablename__ = "fine_tune_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_fine_tune_checkpoints_step"),)

    id: str = Field(primary_key=True, max_length=64)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=64)
    step: int
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    path: str
    digest: str | None = Field(default=None, max_length=80)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
