"""How a deployment is doing over a window of its traffic, and what it costs per day."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from evalhub.api.deps import PlatformDep, Viewer
from evalhub.monitoring.quality import CostReport, QualityReport, cost_report, quality_report

router = APIRouter()

Deployment = Annotated[str, Query(max_length=128, description="the deployment's name")]
Since = Annotated[
    datetime | None, Query(description="window start (UTC when naive); default: until - 24 h")
]
Until = Annotated[datetime | None, Query(description="window end, exclusive; default: now")]


@router.get("/monitors/quality", tags=["monitors"])
def get_quality(
    platform: PlatformDep,
    _: Viewer,
    deployment: Deployment,
    arm: Annotated[str | None, Query(max_length=64)] = None,
    version: Annotated[str | None, Query(max_length=160, description="e.g. bot/3")] = None,
    since: Since = None,
    until: Until = None,
    bucket: Annotated[
        str | None, Query(max_length=16, description="a time bucket: 30s, 5min, 1h, 1d")
    ] = None,
) -> QualityReport:
    """Requests, error rate, latency percentiles, tokens, cost, online metric means and feedback
    per arm and version (and per time bucket). A window without traffic is a 404."""
    return quality_report(
        platform,
        deployment,
        arm=arm,
        version=version,
        since=since,
        until=until,
        bucket=bucket,
    )


@router.get("/monitors/cost", tags=["monitors"])
def get_cost(
    platform: PlatformDep,
    _: Viewer,
    deployment: Deployment,
    since: Since = None,
    until: Until = None,
) -> CostReport:
    """Cost, requests and tokens per arm, version and UTC day (prices: EVALHUB_PRICES)."""
    return cost_report(platform, deployment, since=since, until=until)
