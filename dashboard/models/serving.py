"""Deployments, the controller's decisions, traffic quality, alerts and drift checks."""

from __future__ import annotations

from typing import Any

from dashboard.models import ReadModel


class Arm(ReadModel):
    name: str
    model: str
    weight: float


class Rollout(ReadModel):
    control: str
    candidate: str
    steps: list[float]
    index: int
    status: str


class Deployment(ReadModel):
    name: str
    backend: str
    arms: list[Arm]
    rollout: Rollout | None = None
    revision: int


class Decision(ReadModel):
    id: int | None = None
    deployment: str
    action: str
    step: int
    weight: float
    candidate_version: str | None = None
    control_version: str | None = None
    reason: str
    metrics: list[dict[str, Any]] = []
    created_at: str


class QualityRow(ReadModel):
    arm: str | None = None
    version: str | None = None
    bucket: str | None = None
    requests: int
    errors: int
    error_rate: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    cost: float | None = None
    metrics: dict[str, Any] = {}
    feedback_rate: float | None = None
    feedback: dict[str, Any] = {}


class Alert(ReadModel):
    id: int
    rule: str
    deployment: str
    metric: str
    severity: str
    value: float
    condition: str
    delivery: str
    created_at: str


class DriftCheck(ReadModel):
    id: str
    deployment: str
    arm: str | None = None
    drifted: bool
    share_drifted: float
    summary: dict[str, Any] = {}
    created_at: str
