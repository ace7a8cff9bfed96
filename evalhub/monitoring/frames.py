"""The traffic log, online scores and feedback as the frames `monitors` reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sql
from sqlmodel import col

from evalhub.db.inserts import chunks
from evalhub.monitoring.online import prompt_case
from evalhub.monitoring.tables import FeedbackRow, OnlineScoreRow
from evalhub.platform import Platform
from evalhub.serving.tables import TrafficRow
from monitors.quality import TRAFFIC_COLUMNS as NUMBERS

if TYPE_CHECKING:  # pandas loads in 0.5 s: only the functions that use it import it
    import pandas as pd

#: The columns `monitors` reads, and the texts that drift checks describe.
TRAFFIC_COLUMNS = [*NUMBERS, "prompt", "response"]


def traffic_frame(rows: Sequence[TrafficRow]) -> pd.DataFrame:
    import pandas as pd

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
    import pandas as pd

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
    return _values(platform, OnlineScoreRow, "metric", request_ids, deployment, since)


def feedback_frame(
    platform: Platform,
    request_ids: Sequence[str] | None = None,
    *,
    deployment: str | None = None,
    since: datetime | None = None,
) -> pd.DataFrame:
    """Feedback on these requests, or on a deployment's requests given since `since`."""
    return _values(platform, FeedbackRow, "name", request_ids, deployment, since)


def _values(
    platform: Platform,
    table: type[OnlineScoreRow] | type[FeedbackRow],
    name: str,
    request_ids: Sequence[str] | None,
    deployment: str | None,
    since: datetime | None,
) -> pd.DataFrame:
    """(request_id, name, score) rows of scores or feedback, by request ids (a chunk of ids at
    a time: PostgreSQL takes 65,535 parameters) or by deployment and time."""
    import pandas as pd

    key = col(table.request_id)
    query = sql.select(key, col(getattr(table, name)), col(table.score)).where(
        col(table.score).is_not(None)
    )
    if deployment is not None:
        query = query.where(col(table.deployment) == deployment)
    if since is not None:
        query = query.where(col(table.created_at) >= since)
    rows: list[tuple[Any, ...]] = []
    with platform.engine.connect() as connection:
        if request_ids is None:
            rows.extend(tuple(row) for row in connection.execute(query))
        else:
            for part in chunks(list(request_ids)):
                rows.extend(tuple(row) for row in connection.execute(query.where(key.in_(part))))
    return pd.DataFrame(rows, columns=["request_id", name, "score"])
