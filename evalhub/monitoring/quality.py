"""How a deployment is doing over a window of its traffic: errors, latency, tokens, cost, online
metric scores and feedback (`monitors.quality`), per arm and version and optionally per time
bucket; and its cost per UTC day.

Scores and feedback are read by deployment from the window's start on (they are written after the
request they are about), then matched to the window's requests by request id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field
from sqlmodel import Session, select

from evalhub.monitoring.frames import feedback_frame, scores_frame, window_frame
from evalhub.platform import Platform
from evalhub.serving.tables import DeploymentRow, TrafficRow
from monitors.quality import DailyCost, QualityRow, cost_per_day, quality
from registry.errors import invalid, not_found
from registry.tables import utcnow

#: The window when a request names no `since`.
DEFAULT_WINDOW = timedelta(hours=24)
_BUCKET = re.compile(r"^([1-9][0-9]{0,5})(s|min|h|d)$")
_BUCKET_UNITS = {"s": "s", "min": "min", "h": "h", "d": "D"}


class QualityReport(BaseModel):
    deployment: str
    since: datetime
    until: datetime
    arm: str | None
    version: str | None
    bucket: str | None
    rows: list[QualityRow] = Field(description="per arm and version (and time bucket)")


class CostReport(BaseModel):
    deployment: str
    since: datetime
    until: datetime
    cost: float
    requests: int
    tokens: int
    days: list[DailyCost]


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
    frame = window_frame(platform, deployment, span.since, span.until, arm=arm, version=version)
    if frame.empty:
        _refuse_empty(deployment, span, arm, version)
    rows = quality(
        frame,
        scores_frame(platform, deployment=deployment, since=span.since),
        feedback_frame(platform, deployment=deployment, since=span.since),
        bucket=frequency,
    )
    return QualityReport(
        deployment=deployment,
        since=span.since,
        until=span.until,
        arm=arm,
        version=version,
        bucket=bucket,
        rows=rows,
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
    frame = window_frame(platform, deployment, span.since, span.until)
    if frame.empty:
        _refuse_empty(deployment, span, None, None)
    days = cost_per_day(frame)
    return CostReport(
        deployment=deployment,
        since=span.since,
        until=span.until,
        cost=sum(day.cost for day in days),
        requests=sum(day.requests for day in days),
        tokens=sum(day.tokens for day in days),
        days=days,
    )


def overall(
    platform: Platform, deployment: str, span: Window, *, arm: str | None = None
) -> QualityRow | None:
    """One row over every version of the deployment (of every arm, or of `arm`) in the window;
    None when it had no traffic."""
    frame = window_frame(platform, deployment, span.since, span.until, arm=arm)
    if frame.empty:
        return None
    frame = frame.assign(version=None) if arm is not None else frame.assign(arm=None, version=None)
    (row,) = quality(
        frame,
        scores_frame(platform, deployment=deployment, since=span.since),
        feedback_frame(platform, deployment=deployment, since=span.since),
    )
    return row


def today(now: datetime | None = None) -> Window:
    """The current UTC day so far."""
    now = now or utcnow()
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return Window(midnight, now + timedelta(microseconds=1))
