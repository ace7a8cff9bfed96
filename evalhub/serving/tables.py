"""Backends, deployments (arms, weights, rollout) and the traffic log, in the one database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text
from sqlmodel import Field, SQLModel

from registry.tables import UTCDateTime, utcnow


def _time() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class BackendRow(SQLModel, table=True):
    __tablename__ = "backends"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True, index=True)
    kind: str = Field(max_length=16, description="local or vllm")
    managed: bool = Field(description="evalhub starts and supervises the process")
    urls: list[str] = Field(
        default_factory=list,
        sa_column=Column(JSON, nullable=False),
        description="one OpenAI-compatible base URL (ending in /v1) per replica",
    )
    base_ref: str = Field(max_length=160, description="the base model version it serves")
    base_digest: str = Field(max_length=80)
    served_name: str = Field(max_length=160, description="the base model's name on the backend")
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _time()
    created_by: str = Field(default="", max_length=128)


class DeploymentRow(SQLModel, table=True):
    __tablename__ = "deployments"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True, index=True)
    backend: str = Field(max_length=128)
    sticky: str = Field(default="user", max_length=16, description="user, header or none")
    failover: bool = Field(default=False, description="send a failed request to the control arm")
    arms: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    rollout: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    monitoring: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(JSON, nullable=True),
        description="online scoring: sample_rate and metrics",
    )
    revision: int = Field(default=1, description="bumped on every change of arms or weights")
    previous_arms: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    created_at: datetime = _time()
    updated_at: datetime = _time()
    created_by: str = Field(default="", max_length=128)


class TrafficRow(SQLModel, table=True):
    __tablename__ = "traffic"
    __table_args__ = (Index("ix_traffic_deployment_time", "deployment", "created_at"),)

    id: str = Field(primary_key=True, max_length=64)
    created_at: datetime = _time()
    deployment: str | None = Field(default=None, max_length=128)
    arm: str | None = Field(default=None, max_length=64)
    model: str = Field(max_length=200, description="what the client asked for")
    version: str | None = Field(default=None, max_length=160, description="exact version ref")
    digest: str | None = Field(default=None, max_length=80)
    user: str | None = Field(default=None, max_length=200)
    endpoint: str = Field(max_length=32, description="chat.completions or completions")
    request: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    response_text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    status: int
    error: str | None = None
    stream: bool = False
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
