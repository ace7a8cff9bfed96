"""The traffic log, online scores and feedback as the frames `monitors` reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sql
from sqlmodel import col

from evalhub.db.inserts import chunks
from evalhub.monitoring.online import prompt_case
from evalhub.monitoring.tables import FeedbackRow, OnlineScoreRow
from evalhub.platform import Platform
from evalhub.serving.tables import TrafficRow
from monitors.quality import TRAFFIC_COLUMNS as NUMBERS

#: The columns `monitors` reads, and the texts that drift checks describe.
TRAFFIC_COLUMNS = [*NUMBERS, "prompt", "response"]


def traffic_frame(rows: Sequence[TrafficRow]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "request_id": row.id,
                "created_at": row.created_at,
                "deployment": row.deployment,
                "arm": row.arm,
                "version": row.version,
                "status": row.status,
                "error": row.error,
                "latency_ms": row.latency_ms,
                "ttft_ms": row.ttft_ms,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "cost": row.cost,
                "prompt": _last_user_text(row),
                "response": row.response_text,
            }
            for row in rows
        ],
        columns=TRAFFIC_COLUMNS,
    )


def _last_user_text(row: TrafficRow) -> str:
    case = prompt_case(row)
    if case.messages:
        users = [m.content for m in case.messages if m.role == "user"]
        return str(users[-1]) if users else ""
    return case.input or ""


def window_frame(
    platform: Platform,
    deployment: str,
    since: datetime,
    until: datetime,
    *,
    arm: str | None = None,
    version: str | None = None,
) -> pd.DataFrame:
    """A deployment's records in [since, until), without their texts: what quality and cost
    read, straight from the columns (no request JSON is parsed)."""
    names = ["id", *NUMBERS[1:]]
    query = sql.select(*[col(getattr(TrafficRow, name)) for name in names]).where(
        col(TrafficRow.deployment) == deployment,
        col(TrafficRow.created_at) >= since,
        col(TrafficRow.created_at) < until,
    )
    if arm is not None:
        query = query.where(col(TrafficRow.arm) == arm)
    if version is not None:
        query = query.where(col(TrafficRow.version) == version)
    with platform.engine.connect() as connection:
        rows = connection.execute(query.order_by(col(TrafficRow.created_at))).all()
    frame = pd.DataFrame([tuple(row) for row in rows], columns=["request_id", *names[1:]])
    return frame.assign(prompt=None, response=None)[TRAFFIC_COLUMNS]


def scores_frame(
    platform: Platform,
    request_ids: Sequence[str] | None = None,
    *,
    deployment: str | None = None,
    since: datetime | None = None,
) -> pd.DataFrame:
    """Online scores of these requests, or of a deployment's requests scored since `since`
    (scores are written after the request they are about)."""
    query = sql.select(
        col(OnlineScoreRow.request_id), col(OnlineScoreRow.metric), col(OnlineScoreRow.score)
    ).where(col(OnlineScoreRow.score).is_not(None))
    if request_ids is not None:
        return _by_ids(
            platform,
            query,
            col(OnlineScoreRow.request_id),
            request_ids,
            ["request_id", "metric", "score"],
        )
    if deployment is not None:
        query = query.where(col(OnlineScoreRow.deployment) == deployment)
    if since is not None:
        query = query.where(col(OnlineScoreRow.created_at) >= since)
    with platform.engine.connect() as connection:
        rows = connection.execute(query).all()
    return pd.DataFrame([tuple(row) for row in rows], columns=["request_id", "metric", "score"])


def feedback_frame(
    platform: Platform,
    request_ids: Sequence[str] | None = None,
    *,
    deployment: str | None = None,
    since: datetime | None = None,
) -> pd.DataFrame:
    """Feedback on these requests, or on a deployment's requests given since `since`."""
    query = sql.select(col(FeedbackRow.request_id), col(FeedbackRow.name), col(FeedbackRow.score))
    if request_ids is not None:
        return _by_ids(
            platform,
            query,
            col(FeedbackRow.request_id),
            request_ids,
            ["request_id", "name", "score"],
        )
    if deployment is not None:
        query = query.where(col(FeedbackRow.deployment) == deployment)
    if since is not None:
        query = query.where(col(FeedbackRow.created_at) >= since)
    with platform.engine.connect() as connection:
        rows = connection.execute(query).all()
    return pd.DataFrame([tuple(row) for row in rows], columns=["request_id", "name", "score"])


def _by_ids(
    platform: Platform, query: Any, key: Any, ids: Sequence[str], columns: list[str]
) -> pd.DataFrame:
    """`query` for the rows whose `key` is one of `ids`, a chunk of ids at a time."""
    rows: list[tuple[Any, ...]] = []
    with platform.engine.connect() as connection:
        for part in chunks(list(ids)):
            rows.extend(tuple(row) for row in connection.execute(query.where(key.in_(part))))
    return pd.DataFrame(rows, columns=columns)
