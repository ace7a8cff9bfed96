"""From production back to evaluation and fine-tuning: a deployment's requests (those with
negative feedback, or those of a drift check's window) registered as a dataset version of eval
cases or of chat training rows, each row carrying its request id."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement
from sqlmodel import Session, col, select

from evalhub.monitoring.drift import DriftService
from evalhub.monitoring.online import prompt_case
from evalhub.monitoring.tables import FeedbackRow
from evalhub.platform import Platform
from evalhub.serving.deployments import DeploymentService
from evalhub.serving.tables import TrafficRow
from registry.entities import DatasetVersion
from registry.errors import invalid

MAX_EXPORT = 100_000


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    deployment: str = Field(max_length=128)
    as_: Literal["eval", "chat"] = Field(alias="as", description="eval cases or chat rows")
    dataset: str = Field(max_length=128, description="registered (created if missing)")
    feedback: Literal["negative", "positive"] | None = Field(
        default=None, description="only requests with such feedback (below or above mid-scale)"
    )
    feedback_name: str = Field(default="thumbs", max_length=64)
    drifted: str | None = Field(
        default=None, max_length=40, description="only the requests of this drift check's window"
    )
    arm: str | None = Field(default=None, max_length=64)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=10_000, ge=1, le=MAX_EXPORT)


class ExportResult(BaseModel):
    rows: int
    version: DatasetVersion
    created: bool = Field(description="false when the same rows were exported before")


def answered(
    deployment: str,
    *,
    arm: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[ColumnElement[bool]]:
    """Conditions on the traffic log for a deployment's answered requests (of one arm, in a
    window): what goes back into evaluation, training or human labelling."""
    conditions: list[ColumnElement[bool]] = [
        col(TrafficRow.deployment) == deployment,
        col(TrafficRow.status) < 400,
        col(TrafficRow.response_text).is_not(None),
    ]
    if arm is not None:
        conditions.append(col(TrafficRow.arm) == arm)
    if since is not None:
        conditions.append(col(TrafficRow.created_at) >= since)
    if until is not None:
        conditions.append(col(TrafficRow.created_at) < until)
    return conditions


def export(platform: Platform, body: ExportRequest, *, actor: str) -> ExportResult:
    DeploymentService(platform).get(body.deployment)
    query = select(TrafficRow).where(
        *answered(body.deployment, arm=body.arm, since=body.since, until=body.until)
    )
    if body.drifted is not None:
        span = DriftService(platform).current_window(body.drifted)
        if span is None:
            raise invalid(f"drift check {body.drifted} held no requests")
        deployment, arm, start, end = span
        if deployment != body.deployment:
            raise invalid(f"drift check {body.drifted} is of {deployment!r}")
        query = query.where(col(TrafficRow.created_at) >= start, col(TrafficRow.created_at) < end)
        if arm is not None:
            query = query.where(TrafficRow.arm == arm)
    if body.feedback is not None:
        scale = platform.settings.feedback_scales.get(body.feedback_name)
        if scale is None:
            raise invalid(f"feedback {body.feedback_name!r} has no declared scale")
        middle = sum(scale) / 2
        chosen = select(FeedbackRow.request_id).where(FeedbackRow.name == body.feedback_name)
        chosen = chosen.where(
            col(FeedbackRow.score) < middle
            if body.feedback == "negative"
            else col(FeedbackRow.score) > middle
        )
        query = query.where(col(TrafficRow.id).in_(chosen))
    with Session(platform.engine) as session:
        rows = list(session.exec(query.order_by(col(TrafficRow.created_at)).limit(body.limit)))
    if not rows:
        raise invalid(f"no answered requests of {body.deployment!r} match the export's filters")
    with tempfile.TemporaryDirectory(prefix="evalhub-export-") as work:
        path = Path(work) / f"{body.dataset}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(_row(row, body.as_), ensure_ascii=False) + "\n")
        version, created = platform.registry.add_dataset_version(
            body.dataset,
            path,
            format=body.as_,
            filename=path.name,
            create=True,
            actor=actor,
        )
    return ExportResult(rows=len(rows), version=version, created=created)


def _row(row: TrafficRow, kind: str) -> dict[str, Any]:
    case = prompt_case(row)
    messages = [m.model_dump() for m in case.messages] if case.messages else None
    metadata = {
        "request_id": row.id,
        "deployment": row.deployment,
        "arm": row.arm,
        "version": row.version,
        "created_at": row.created_at.isoformat(),
    }
    if kind == "chat":
        prompt = messages or [{"role": "user", "content": case.input or ""}]
        answer = {"role": "assistant", "content": row.response_text or ""}
        return {"messages": [*prompt, answer], "metadata": metadata}
    case_row: dict[str, Any] = {"id": row.id}
    if messages:
        case_row["messages"] = messages
    else:
        case_row["input"] = case.input or ""
    # What production answered: a reference to review and correct, not a verified answer.
    case_row["metadata"] = {**metadata, "production_answer": row.response_text}
    return case_row
