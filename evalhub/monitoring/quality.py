"""How a deployment is doing over a window of its traffic: errors, latency, tokens, cost, online
metric scores and feedback (`monitors.quality`), per arm and version and optionally per time
bucket; and its cost per UTC day.

Scores and feedback are read by deployment from the window's start on (they are written after the
request they are about), then matched to the window's requests by request id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import sqlalchemy as sql
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from evalhub.monitoring.tables import FeedbackRow, OnlineScoreRow
from evalhub.platform import Platform
from evalhub.serving.tables import DeploymentRow, TrafficRow
from monitors.quality import TRAFFIC_COLUMNS, DailyCost, QualityRow, cost_per_day, quality
from registry.errors import invalid, not_found
from registry.tables import utcnow

#: The window when a request names no `since`.
DEFAULT_WINDOW = timedelta(hours=24)
_BUCKET = re.compile(r"^([1-9][0-9]{0,5})(s|min|h|d)$")
_BUCKET_UNITS = {"s": "s", "min": "min", "h": "h", "d": "D"}


class ScoreMean(BaseModel):
    mean: float
    count: int = Field(description="how many requests have the score")


class QualityFigures(BaseModel):
    """One arm and version (and time bucket): the numbers of `monitors.quality.QualityRow`."""

    deployment: str | None
    arm: str | None
    version: str | None
    bucket: datetime | None = Field(description="start of the time bucket; null when unbucketed")
    requests: int
    errors: int = Field(description="requests with status >= 400 or an error")
    error_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    ttft_p50_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    prompt_tokens_mean: float | None
    completion_tokens_mean: float | None
    cost: float
    metrics: dict[str, ScoreMean] = Field(description="online metric -> mean score")
    feedback_requests: int
    feedback_rate: float = Field(description="share of the requests with any feedback")
    feedback: dict[str, ScoreMean] = Field(description="feedback name -> mean score")


class QualityReport(BaseModel):
    deployment: str
    since: datetime
    until: datetime
    arm: str | None
    version: str | None
    bucket: str | None
    rows: list[QualityFigures]


class DailyCostFigures(BaseModel):
    arm: str | None
    version: str | None
    day: date = Field(description="the UTC day")
    cost: float
    requests: int
    tokens: int


class CostReport(BaseModel):
    deployment: str
    since: datetime
    until: datetime
    cost: float
    requests: int
    tokens: int
    days: list[DailyCostFigures]


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime
    """Exclusive."""

    @property
    def seconds(self) -> float:
        return (self.until - self.since).total_seconds()


def window(
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    now: datetime | None = None,
    default: timedelta = DEFAULT_WINDOW,
) -> Window:
    """The window a request asks for; naive times are UTC. Refuses (400) one that ends before it
    starts or that no calendar holds."""
    try:
        end = _utc(until) if until is not None else (now or utcnow())
        start = _utc(since) if since is not None else end - default
    except (OverflowError, ValueError) as error:
        raise invalid(f"since and until must be times between years 1 and 9999: {error}") from error
    if start >= end:
        raise invalid(
            f"the window must start before it ends: since {start.isoformat()} is not before "
            f"until {end.isoformat()}"
        )
    return Window(start, end)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def pandas_bucket(bucket: str) -> str:
    """`5min`, `1h`, `1d`: a fixed time bucket, as the pandas frequency `monitors` takes."""
    match = _BUCKET.fullmatch(bucket)
    if match is None:
        raise invalid(
            f"bucket must be a whole number and a unit of s, min, h or d, such as 5min or 1h; "
            f"got {bucket!r}"
        )
    return f"{match.group(1)}{_BUCKET_UNITS[match.group(2)]}"


def check_deployment(platform: Platform, name: str) -> None:
    """A deployment that exists, or did: its traffic outlives it. Else 404."""
    with Session(platform.engine) as session:
        if session.exec(select(DeploymentRow.id).where(DeploymentRow.name == name)).first():
            return
        if session.exec(select(TrafficRow.id).where(TrafficRow.deployment == name)).first():
            return
    raise not_found(f"deployment {name!r} does not exist and has no traffic")


def traffic(
    platform: Platform,
    deployment: str,
    span: Window,
    *,
    arm: str | None = None,
    version: str | None = None,
) -> pd.DataFrame:
    """The window's traffic records as the frame `monitors.quality` reads."""
    names = [
        "id", "created_at", "deployment", "arm", "version", "status", "error", "latency_ms",
        "ttft_ms", "prompt_tokens", "completion_tokens", "cost",
    ]  # fmt: skip
    columns = [col(getattr(TrafficRow, name)) for name in names]
    query = sql.select(*columns).where(
        col(TrafficRow.deployment) == deployment,
        col(TrafficRow.created_at) >= span.since,
        col(TrafficRow.created_at) < span.until,
    )
    if arm is not None:
        query = query.where(col(TrafficRow.arm) == arm)
    if version is not None:
        query = query.where(col(TrafficRow.version) == version)
    with platform.engine.connect() as connection:
        rows = connection.execute(query.order_by(col(TrafficRow.created_at))).all()
    return pd.DataFrame([tuple(row) for row in rows], columns=list(TRAFFIC_COLUMNS))


def _scores(platform: Platform, deployment: str, since: datetime) -> pd.DataFrame:
    query = sql.select(
        col(OnlineScoreRow.request_id), col(OnlineScoreRow.metric), col(OnlineScoreRow.score)
    ).where(col(OnlineScoreRow.deployment) == deployment, col(OnlineScoreRow.created_at) >= since)
    with platform.engine.connect() as connection:
        rows = connection.execute(query).all()
    frame = pd.DataFrame([tuple(row) for row in rows], columns=["request_id", "metric", "score"])
    return frame.dropna(subset=["score"])


def _feedback(platform: Platform, deployment: str, since: datetime) -> pd.DataFrame:
    query = sql.select(
        col(FeedbackRow.request_id), col(FeedbackRow.name), col(FeedbackRow.score)
    ).where(col(FeedbackRow.deployment) == deployment, col(FeedbackRow.created_at) >= since)
    with platform.engine.connect() as connection:
        rows = connection.execute(query).all()
    return pd.DataFrame([tuple(row) for row in rows], columns=["request_id", "name", "score"])


def _refuse_empty(deployment: str, span: Window, arm: str | None, version: str | None) -> None:
    only = "".join(
        f" {what} {value!r}" for what, value in (("arm", arm), ("version", version)) if value
    )
    raise not_found(
        f"deployment {deployment!r}{' (' + only.strip() + ')' if only else ''} has no traffic "
        f"from {span.since.isoformat()} to {span.until.isoformat()}: widen the window with "
        "since and until, or check the arm and version"
    )


def quality_report(
    platform: Platform,
    deployment: str,
    *,
    arm: str | None = None,
    version: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    bucket: str | None = None,
) -> QualityReport:
    """Per arm and version (and `bucket`); 404 for an unknown deployment or an empty window."""
    frequency = pandas_bucket(bucket) if bucket is not None else None
    span = window(since, until)
    check_deployment(platform, deployment)
    frame = traffic(platform, deployment, span, arm=arm, version=version)
    if frame.empty:
        _refuse_empty(deployment, span, arm, version)
    rows = quality(
        frame,
        _scores(platform, deployment, span.since),
        _feedback(platform, deployment, span.since),
        bucket=frequency,
    )
    return QualityReport(
        deployment=deployment,
        since=span.since,
        until=span.until,
        arm=arm,
        version=version,
        bucket=bucket,
        rows=[QualityFigures.model_validate(row.to_dict()) for row in rows],
    )


def cost_report(
    platform: Platform,
    deployment: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> CostReport:
    """Cost, requests and tokens per arm, version and UTC day, and their totals."""
    span = window(since, until)
    check_deployment(platform, deployment)
    frame = traffic(platform, deployment, span)
    if frame.empty:
        _refuse_empty(deployment, span, None, None)
    days = [_day(day) for day in cost_per_day(frame)]
    return CostReport(
        deployment=deployment,
        since=span.since,
        until=span.until,
        cost=sum(day.cost for day in days),
        requests=sum(day.requests for day in days),
        tokens=sum(day.tokens for day in days),
        days=days,
    )


def _day(day: DailyCost) -> DailyCostFigures:
    return DailyCostFigures(
        arm=day.arm,
        version=day.version,
        day=day.day,
        cost=day.cost,
        requests=day.requests,
        tokens=day.tokens,
    )


def overall(
    platform: Platform, deployment: str, span: Window, *, arm: str | None = None
) -> QualityRow | None:
    """One row over every version of the deployment (of every arm, or of `arm`) in the window;
    None when it had no traffic."""
    frame = traffic(platform, deployment, span, arm=arm)
    if frame.empty:
        return None
    frame = frame.assign(version=None) if arm is not None else frame.assign(arm=None, version=None)
    (row,) = quality(
        frame,
        _scores(platform, deployment, span.since),
        _feedback(platform, deployment, span.since),
    )
    return row


def today(now: datetime | None = None) -> Window:
    """The current UTC day so far."""
    now = now or utcnow()
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return Window(midnight, now + timedelta(microseconds=1))
