"""Feedback, online scores and rollout decisions, linked to the traffic log by request id."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from registry.tables import UTCDateTime, utcnow


def _time() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class FeedbackRow(SQLModel, table=True):
    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("request_id", "name", name="uq_feedback_request_name"),
        Index("ix_feedback_deployment_time", "deployment", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(max_length=64, index=True)
    name: str = Field(max_length=64)
    score: float
    comment: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    user: str | None = Field(default=None, max_length=256)
    # Copied from the traffic record, so feedback filters without a join.
    deployment: str | None = Field(default=None, max_length=128)
    arm: str | None = Field(default=None, max_length=64)
    version: str | None = Field(default=None, max_length=160)
    created_at: datetime = _time()
    created_by: str = Field(default="", max_length=128)


class OnlineScoreRow(SQLModel, table=True):
    __tablename__ = "online_scores"
    __table_args__ = (Index("ix_online_scores_deployment_time", "deployment", "created_at"),)

    request_id: str = Field(primary_key=True, max_length=64)
    metric: str = Field(primary_key=True, max_length=64)
    score: float | None = None
    explanation: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    deployment: str | None = Field(default=None, max_length=128)
    arm: str | None = Field(default=None, max_length=64)
    version: str | None = Field(default=None, max_length=160)
    created_at: datetime = _time()


class RolloutDecisionRow(SQLModel, table=True):
    __tablename__ = "rollout_decisions"
    __table_args__ = (Index("ix_rollout_decisions_deployment", "deployment", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    deployment: str = Field(max_length=128)
    action: str = Field(max_length=16, description="promote, hold, inconclusive or rollback")
    step: int = Field(description="the rollout step the decision was taken at")
    weight: float = Field(description="the candidate's weight at that step")
    candidate_version: str | None = Field(default=None, max_length=160)
    control_version: str | None = Field(default=None, max_length=160)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    method: str = Field(max_length=200)
    metrics: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    created_at: datetime = _time()


class MonitorLeaseRow(SQLModel, table=True):
    """Who runs the scheduled monitor passes: one process at a time across servers."""

    __tablename__ = "monitor_leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class AlertRuleRow(SQLModel, table=True):
    """A threshold on one monitored value of one deployment (optionally one arm)."""

    __tablename__ = "alert_rules"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True, index=True)
    metric: str = Field(max_length=128)
    deployment: str = Field(max_length=128)
    arm: str | None = Field(default=None, max_length=64)
    window_seconds: int
    comparison: str = Field(max_length=2)
    threshold: float
    severity: str = Field(max_length=16)
    webhook_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Stored as given: the HMAC needs it. It is never returned, logged or audited.
    secret: str | None = Field(default=None, max_length=512)
    created_at: datetime = _time()
    created_by: str = Field(default="", max_length=128)


class AlertRow(SQLModel, table=True):
    """A rule that fired, with the numbers it fired on."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_rule", "rule_id", "id"),
        Index("ix_alerts_deployment", "deployment", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # The rule's id and name when it fired: the alert outlives a deleted rule.
    rule_id: int
    rule: str = Field(max_length=128)
    deployment: str = Field(max_length=128)
    arm: str | None = Field(default=None, max_length=64)
    metric: str = Field(max_length=128)
    severity: str = Field(max_length=16)
    value: float
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    delivery: str = Field(
        default="none", max_length=16, description="none (no webhook), pending, delivered, failed"
    )
    created_at: datetime = _time()


class AlertDeliveryRow(SQLModel, table=True):
    """One attempt to POST an alert to its rule's webhook."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index("ix_alert_deliveries_alert", "alert_id", "attempt"),)

    id: int | None = Field(default=None, primary_key=True)
    alert_id: int = Field(foreign_key="alerts.id")
    attempt: int
    url: str = Field(sa_column=Column(Text, nullable=False))
    status_code: int | None = None
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    duration_ms: float
    created_at: datetime = _time()
