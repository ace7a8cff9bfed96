"""Online scoring: the evaluation engine's reference-free metrics on sampled production answers.

Each record is scored once per metric, off the request path (a monitor pass), and the score is
stored under its request id. Sampling is by request id, so every process samples the same records.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, exists, or_
from sqlmodel import Session, col, select

from evalhub.db.inserts import chunks, insert_new
from evalhub.eval.case import Case
from evalhub.eval.metric_policy import MetricPolicy
from evalhub.eval.metrics import MetricError, create_metric
from evalhub.eval.service import metric_runtime
from evalhub.monitoring.tables import OnlineScoreRow
from evalhub.platform import Platform
from evalhub.serving.deployments import OnlineMetric
from evalhub.serving.routing import bucket
from evalhub.serving.tables import TrafficRow
from registry.db import writer
from registry.errors import invalid
from registry.tables import utcnow

#: The engine's metrics that need no reference answer: they can score live traffic.
ONLINE_METRICS = (
    "json_valid",
    "json_schema",
    "regex",
    "contains",
    "required_sections",
    "llm_judge",
)


SCORES: Table = OnlineScoreRow.__table__  # type: ignore[attr-defined]
ROLES = ("system", "user", "assistant", "tool", "developer")


def check_metrics(platform: Platform, metrics: Sequence[OnlineMetric]) -> None:
    """Refuses (400) a metric that is unknown, needs a reference answer, or has bad options."""
    for metric in metrics:
        if metric.name not in ONLINE_METRICS:
            raise invalid(
                f"metric {metric.name!r} cannot score live traffic; online metrics (no "
                f"reference answer needed): {', '.join(ONLINE_METRICS)}"
            )
        _build(platform, metric)


def _build(platform: Platform, metric: OnlineMetric) -> Any:
    runtime = metric_runtime(platform.settings, "", None).get(metric.name, {})
    policy = MetricPolicy.for_server(platform.settings.metric_modules)
    try:
        return create_metric(metric.name, policy=policy, **{**runtime, **metric.options})
    except (MetricError, TypeError, ValueError) as error:
        raise invalid(f"metric {metric.name!r}: {error}") from error


def sampled(deployment: str, request_id: str, rate: float) -> bool:
    return rate >= 1.0 or bucket(f"{deployment}/monitoring", request_id) < rate * 100


def prompt_case(row: TrafficRow) -> Case:
    """The request as an evaluation case: its messages, or its prompt."""
    request = row.request or {}
    messages = request.get("messages")
    if isinstance(messages, list) and messages:
        return Case.model_validate({"id": row.id, "messages": _plain(messages)})
    prompt = request.get("prompt")
    return Case(id=row.id, input=prompt if isinstance(prompt, str) else "")


def _plain(messages: list[Any]) -> list[dict[str, str]]:
    plain = []
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content")
            role = message.get("role")
            role = role if role in ROLES else "user"
            plain.append({"role": role, "content": _text(content)})
    return plain or [{"role": "user", "content": ""}]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def score_rows(
    platform: Platform, rows: Sequence[TrafficRow], metrics: Sequence[OnlineMetric]
) -> int:
    """Scores the answered records that have no score yet for each metric; returns how many."""
    answered = [row for row in rows if row.status < 400 and row.response_text is not None]
    if not answered or not metrics:
        return 0
    done: set[tuple[str, str]] = set()
    with Session(platform.engine) as session:
        for ids in chunks([row.id for row in answered]):
            query = select(OnlineScoreRow.request_id, OnlineScoreRow.metric).where(
                col(OnlineScoreRow.request_id).in_(list(ids))
            )
            done.update((request_id, metric) for request_id, metric in session.exec(query))
    written = 0
    for spec in metrics:
        todo = [row for row in answered if (row.id, spec.name) not in done]
        if not todo:
            continue
        metric = _build(platform, spec)
        scores = metric.score(
            [row.response_text or "" for row in todo], [prompt_case(r) for r in todo]
        )
        values = [
            {
                "request_id": row.id,
                "metric": spec.name,
                "score": score.value,
                "explanation": (score.explanation or "")[:2000],
                "deployment": row.deployment,
                "arm": row.arm,
                "version": row.version,
                "created_at": utcnow(),
            }
            for row, score in zip(todo, scores, strict=True)
        ]
        with writer(platform.engine).begin() as connection:
            # Another pass may have scored some meanwhile: theirs stand, each is scored once.
            connection.execute(insert_new(connection, SCORES, ["request_id", "metric"]), values)
        written += len(todo)
    return written


def unscored(
    platform: Platform, deployment: str, since: datetime, metrics: Sequence[str], rate: float
) -> list[TrafficRow]:
    """The deployment's answered records since `since` that the sample takes and that lack a
    score of one of `metrics`. Only ids are read for the sampling; whole records for the sample."""
    missing = [
        ~exists().where(
            col(OnlineScoreRow.request_id) == col(TrafficRow.id), col(OnlineScoreRow.metric) == name
        )
        for name in metrics
    ]
    query = select(TrafficRow.id).where(
        TrafficRow.deployment == deployment,
        col(TrafficRow.created_at) >= since,
        col(TrafficRow.status) < 400,
        col(TrafficRow.response_text).is_not(None),
        or_(*missing),
    )
    with Session(platform.engine) as session:
        chosen = [i for i in session.exec(query) if sampled(deployment, i, rate)]
        rows: list[TrafficRow] = []
        for ids in chunks(chosen):
            rows.extend(session.exec(select(TrafficRow).where(col(TrafficRow.id).in_(list(ids)))))
    return rows


def traffic_rows(
    platform: Platform, deployment: str, *, since: Any = None, arms: Sequence[str] | None = None
) -> list[TrafficRow]:
    query = select(TrafficRow).where(TrafficRow.deployment == deployment)
    if since is not None:
        query = query.where(col(TrafficRow.created_at) >= since)
    if arms is not None:
        query = query.where(col(TrafficRow.arm).in_(list(arms)))
    with Session(platform.engine) as session:
        return list(session.exec(query.order_by(col(TrafficRow.created_at))))
