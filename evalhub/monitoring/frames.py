"""The traffic log, online scores and feedback as the frames `monitors` reads."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from sqlmodel import Session, col, select

from evalhub.monitoring.online import prompt_case
from evalhub.monitoring.tables import FeedbackRow, OnlineScoreRow
from evalhub.platform import Platform
from evalhub.serving.tables import TrafficRow

TRAFFIC_COLUMNS = [
    "request_id", "created_at", "deployment", "arm", "version", "status", "error", "latency_ms",
    "ttft_ms", "prompt_tokens", "completion_tokens", "cost", "prompt", "response",
]  # fmt: skip


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


def scores_frame(platform: Platform, request_ids: Sequence[str]) -> pd.DataFrame:
    with Session(platform.engine) as session:
        rows = session.exec(
            select(OnlineScoreRow).where(col(OnlineScoreRow.request_id).in_(list(request_ids)))
        ).all()
    return pd.DataFrame(
        [{"request_id": r.request_id, "metric": r.metric, "score": r.score} for r in rows],
        columns=["request_id", "metric", "score"],
    )


def feedback_frame(platform: Platform, request_ids: Sequence[str]) -> pd.DataFrame:
    with Session(platform.engine) as session:
        rows = session.exec(
            select(FeedbackRow).where(col(FeedbackRow.request_id).in_(list(request_ids)))
        ).all()
    return pd.DataFrame(
        [{"request_id": r.request_id, "name": r.name, "score": r.score} for r in rows],
        columns=["request_id", "name", "score"],
    )
