"""Eval runs, their per-case results and the shared generation cache, in the platform database.

A run row holds what identifies the run (suite, dataset, target versions and digests), its
status, the metric summaries and, once finished, the whole run log. Case rows are written as
each generation finishes, so a run whose worker dies keeps its work and resumes from it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from registry.tables import UTCDateTime, utcnow


def _time(nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


def _json(nullable: bool = True) -> Any:
    if nullable:
        return Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=True))
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class EvalRunRow(SQLModel, table=True):
    __tablename__ = "eval_runs"

    id: str = Field(primary_key=True, max_length=64, description="evalrun-<hex>")
    seq: int | None = Field(default=None, index=True, description="creation order, for paging")
    job_id: str | None = Field(default=None, max_length=64, index=True)
    status: str = Field(max_length=16, description="queued, running, completed or failed")
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    suite_name: str = Field(max_length=256, index=True)
    suite_version: str = Field(max_length=128)
    suite_digest: str = Field(max_length=64)
    suite_text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    dataset_digest: str = Field(max_length=64)
    dataset_ref: str = Field(default="", max_length=512, description="as the suite names it")
    dataset_version: str | None = Field(
        default=None, max_length=256, description="registry dataset version ref, e.g. qa/2"
    )
    dataset_text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    model: str = Field(max_length=256, description="the model as requested: a ref or a name")
    model_version: str | None = Field(
        default=None, max_length=256, index=True, description="exact registry version, name/N"
    )
    model_digest: str | None = Field(default=None, max_length=128)
    base_url: str | None = Field(default=None, max_length=1024)
    endpoint_model: str = Field(default="", max_length=256, description="model name sent")
    cache_identity: str = Field(default="", max_length=1024)
    options: dict[str, Any] = _json(nullable=False)
    metrics: dict[str, Any] = _json(nullable=False)
    overall_score: float | None = None
    passed: bool | None = None
    case_count: int = 0
    run: dict[str, Any] | None = _json()
    created_by: str = Field(default="", max_length=128)
    created_at: datetime = _time()
    started_at: datetime | None = _time(nullable=True)
    finished_at: datetime | None = _time(nullable=True)


class EvalCaseRow(SQLModel, table=True):
    __tablename__ = "eval_case_results"
    __table_args__ = (
        UniqueConstraint("run_id", "case_id", "repeat", name="uq_eval_case_results_case"),
        Index("ix_eval_case_results_run", "run_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="eval_runs.id", max_length=64)
    case_id: str = Field(max_length=256)
    repeat: int = 0
    output: str = Field(sa_column=Column(Text, nullable=False))
    scores: dict[str, Any] | None = _json()
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    finish_reason: str | None = Field(default=None, max_length=64)
    cached: bool = False
    generation_key: str = Field(default="", max_length=64)
    model: str | None = Field(default=None, max_length=256)
    created_at: datetime = _time()


class GenerationCacheRow(SQLModel, table=True):
    __tablename__ = "eval_generation_cache"

    key: str = Field(primary_key=True, max_length=64)
    value: dict[str, Any] = _json(nullable=False)
    created_at: datetime = _time()
