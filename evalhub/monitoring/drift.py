"""Drift checks: a current window of a deployment's traffic against a reference (an earlier
window, the deployment's first requests, or a pinned dataset version), by `monitors.drift`.

Each check stores its JSON summary and Evidently's HTML report (an artifact). Prompt embeddings
are computed once per traffic record (MiniLM, offline), stored, and reused by later checks; they
are taken on a sample of each window (`embedding_sample`, 2,000 by default), the descriptors and
columns on every record.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Table, func
from sqlmodel import Session, col, select

from evalhub.db.inserts import chunks, insert_new
from evalhub.eval.metrics.semantic_similarity import default_model_path, embed
from evalhub.monitoring.drift_tables import DriftCheckRow, PromptEmbeddingRow
from evalhub.monitoring.frames import TRAFFIC_COLUMNS, traffic_frame
from evalhub.platform import Platform
from evalhub.serving.deployments import DeploymentService
from evalhub.serving.tables import TrafficRow
from monitors.drift import drift_check, drift_report_html
from registry.db import writer
from registry.entities import Mutation, Page
from registry.errors import invalid, not_found
from registry.paging import decode_page_token, fetch_page, page_of

if TYPE_CHECKING:  # pandas loads in 0.5 s: only the functions that use it import it
    import pandas as pd

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDINGS: Table = PromptEmbeddingRow.__table__  # type: ignore[attr-defined]
MAX_ROWS = 1_000_000


class Window(BaseModel):
    """Requests by time (`since`, `until`) or by count (the `last` or `first` N)."""

    model_config = ConfigDict(extra="forbid")

    since: datetime | None = None
    until: datetime | None = None
    last: int | None = Field(default=None, ge=1, le=MAX_ROWS)
    first: int | None = Field(default=None, ge=1, le=MAX_ROWS)
    dataset: str | None = Field(
        default=None, max_length=200, description="reference only: a dataset version, e.g. train/2"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Window:
        kinds = [
            self.since is not None or self.until is not None,
            self.last is not None,
            self.first is not None,
            self.dataset is not None,
        ]
        if sum(kinds) != 1:
            raise ValueError("a window is since/until, last N, first N or a dataset: one of them")
        return self


class DriftCheckCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployment: str = Field(max_length=128)
    arm: str | None = Field(default=None, max_length=64, description="only this arm's traffic")
    current: Window = Field(default_factory=lambda: Window(last=1000))
    reference: Window = Field(default_factory=lambda: Window(first=1000))
    embeddings: bool = Field(default=True, description="embedding drift of the prompts")
    embedding_sample: int = Field(default=2000, ge=50, le=100_000)


class DriftCheck(BaseModel):
    id: str
    deployment: str
    arm: str | None
    reference: dict[str, Any]
    current: dict[str, Any]
    drifted: bool
    share_drifted: float
    summary: dict[str, Any]
    report_url: str | None
    created_at: datetime
    created_by: str


class DriftService:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def run(self, body: DriftCheckCreate, *, actor: str) -> DriftCheck:
        deployment = DeploymentService(self.platform).get(body.deployment)
        if body.arm is not None and body.arm not in {arm.name for arm in deployment.arms}:
            raise invalid(f"deployment {body.deployment!r} has no arm {body.arm!r}")
        if body.current.dataset is not None:
            raise invalid("the current window is traffic: since/until, last N or first N")
        current_rows = self._rows(body.deployment, body.arm, body.current)
        if not current_rows:
            raise invalid(f"no traffic of {body.deployment!r} in the current window")
        check_id = f"drift-{secrets.token_hex(8)}"
        current = traffic_frame(current_rows)
        if body.reference.dataset is not None:
            reference = dataset_frame(self.platform, body.reference.dataset)
            reference_ids: list[str] | None = None
        else:
            reference_rows = self._rows(body.deployment, body.arm, body.reference)
            if not reference_rows:
                raise invalid(f"no traffic of {body.deployment!r} in the reference window")
            reference = traffic_frame(reference_rows)
            reference_ids = reference["request_id"].tolist()
        if reference.empty:
            raise invalid("the reference has no rows")
        embeddings: dict[str, Any] = {}
        if body.embeddings:
            current = _sample_first(current, body.embedding_sample)
            reference = _sample_first(reference, body.embedding_sample)
            n_cur = min(len(current), body.embedding_sample)
            n_ref = min(len(reference), body.embedding_sample)
            embeddings = {
                "current_embeddings": self._embeddings(current.iloc[:n_cur], cached=True),
                "reference_embeddings": self._embeddings(
                    reference.iloc[:n_ref], cached=reference_ids is not None
                ),
            }
        try:
            result = drift_check(reference, current, **embeddings)
        except ValueError as error:
            raise invalid(f"drift check: {error}") from error
        report_digest = self._store_report(drift_report_html(reference, current))
        summary = result.to_dict()
        summary["embedding_sample"] = body.embedding_sample if body.embeddings else None
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            seq = (session.exec(select(func.max(DriftCheckRow.seq))).one() or 0) + 1
            row = DriftCheckRow(
                id=check_id,
                seq=seq,
                deployment=body.deployment,
                arm=body.arm,
                reference=_described(body.reference, reference),
                current=_described(body.current, current),
                summary=json.loads(json.dumps(summary, default=float)),
                drifted=result.drifted,
                share_drifted=result.share_drifted,
                report_digest=report_digest,
                created_by=actor,
            )
            session.add(row)
            session.flush()
            view = _view(row)
            self.platform.events.record(
                session,
                Mutation(
                    actor=actor,
                    action="drift_check.create",
                    resource=f"monitors/drift/{check_id}",
                    after={"drifted": row.drifted, "share_drifted": row.share_drifted},
                ),
            )
            session.commit()
        return view

    def _rows(self, deployment: str, arm: str | None, window: Window) -> list[TrafficRow]:
        query = select(TrafficRow).where(TrafficRow.deployment == deployment)
        if arm is not None:
            query = query.where(TrafficRow.arm == arm)
        if window.since is not None:
            query = query.where(col(TrafficRow.created_at) >= window.since)
        if window.until is not None:
            query = query.where(col(TrafficRow.created_at) < window.until)
        if window.last is not None:
            query = query.order_by(col(TrafficRow.created_at).desc()).limit(window.last)
        else:
            query = query.order_by(col(TrafficRow.created_at)).limit(window.first or MAX_ROWS)
        with Session(self.platform.engine) as session:
            return list(session.exec(query))

    def _embeddings(self, frame: pd.DataFrame, *, cached: bool) -> np.ndarray:
        """The prompts' embeddings; a traffic record's are computed once and stored."""
        prompts = frame["prompt"].fillna("").astype(str).tolist()
        if not cached:
            return embed(prompts, default_model_path())
        ids = frame["request_id"].tolist()
        stored: dict[str, np.ndarray] = {}
        with Session(self.platform.engine) as session:
            for part in chunks(ids):
                query = select(PromptEmbeddingRow).where(
                    col(PromptEmbeddingRow.request_id).in_(list(part))
                )
                for row in session.exec(query):
                    stored[row.request_id] = np.frombuffer(row.vector, dtype=np.float32)
        missing = [i for i, request_id in enumerate(ids) if request_id not in stored]
        if missing:
            vectors = embed([prompts[i] for i in missing], default_model_path())
            values = []
            for i, vector in zip(missing, vectors, strict=True):
                stored[ids[i]] = np.asarray(vector, dtype=np.float32)
                values.append(
                    {
                        "request_id": ids[i],
                        "model": EMBEDDING_MODEL,
                        "vector": stored[ids[i]].tobytes(),
                    }
                )
            with writer(self.platform.engine).begin() as connection:
                connection.execute(insert_new(connection, EMBEDDINGS, ["request_id"]), values)
        return np.stack([stored[request_id] for request_id in ids])

    def _store_report(self, html: str) -> str:
        with tempfile.TemporaryDirectory(prefix="evalhub-drift-") as work:
            path = Path(work) / "report.html"
            path.write_text(html, encoding="utf-8")
            return self.platform.registry.artifacts.put_file(path).digest

    def get(self, check_id: str) -> DriftCheck:
        return _view(self._row(check_id))

    def _row(self, check_id: str) -> DriftCheckRow:
        with Session(self.platform.engine) as session:
            row = session.get(DriftCheckRow, check_id)
        if row is None:
            raise not_found(f"no drift check {check_id!r}")
        return row

    def report(self, check_id: str) -> bytes:
        row = self._row(check_id)
        if row.report_digest is None:
            raise not_found(f"drift check {check_id!r} has no report")
        return self.platform.registry.artifacts.read_blob(row.report_digest)

    def search(
        self, *, deployment: str | None = None, limit: int = 50, page_token: str | None = None
    ) -> Page[DriftCheck]:
        """Newest first."""
        query = select(DriftCheckRow)
        if deployment is not None:
            query = query.where(DriftCheckRow.deployment == deployment)
        after = decode_page_token(page_token)
        if after is not None:
            query = query.where(col(DriftCheckRow.seq) < after)
        with Session(self.platform.engine) as session:
            rows, more = fetch_page(session, query.order_by(col(DriftCheckRow.seq).desc()), limit)
        return page_of(rows, more, _view, key=lambda row: row.seq)

    def current_window(self, check_id: str) -> tuple[str, str | None, datetime, datetime] | None:
        """A check's deployment, arm and the time span of its current window's records (what an
        export of drifted traffic takes); None for a window that held none."""
        row = self._row(check_id)
        start, end = row.current.get("from"), row.current.get("to")
        if start is None or end is None:
            return None
        until = datetime.fromisoformat(end) + timedelta(microseconds=1)
        return row.deployment, row.arm, datetime.fromisoformat(start), until


def _sample_first(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """The frame with `n` of its rows first (the embedded ones): those whose request id hashes
    lowest, so that checks over the same records embed the same sample (and reuse it)."""
    if len(frame) <= n:
        return frame
    keys = [
        hashlib.sha256(str(key if isinstance(key, str) else f"row-{i}").encode()).digest()
        for i, key in enumerate(frame["request_id"])
    ]
    order = sorted(range(len(frame)), key=keys.__getitem__)
    return frame.iloc[sorted(order[:n]) + sorted(order[n:])]


def _described(window: Window, frame: pd.DataFrame) -> dict[str, Any]:
    """The window as asked for, and the time range and size of what it held."""
    import pandas as pd

    described = window.model_dump(mode="json", exclude_none=True)
    described["rows"] = len(frame)
    times = frame["created_at"].dropna()
    if not times.empty:
        described["from"] = pd.Timestamp(times.min()).isoformat()
        described["to"] = pd.Timestamp(times.max()).isoformat()
    return described


def dataset_frame(platform: Platform, ref: str) -> pd.DataFrame:
    """A dataset version as traffic: the last user message as the prompt, and the last assistant
    message (chat) or the expected answer (eval) as the response."""
    import pandas as pd

    path = platform.registry.dataset_path(ref)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            messages = record.get("messages") or []
            users = [m.get("content", "") for m in messages if m.get("role") == "user"]
            answers = [m.get("content", "") for m in messages if m.get("role") == "assistant"]
            prompt = users[-1] if users else record.get("input", "")
            expected = record.get("expected")
            response = answers[-1] if answers else expected if isinstance(expected, str) else None
            rows.append({"request_id": None, "prompt": str(prompt), "response": response})
    return pd.DataFrame(rows, columns=TRAFFIC_COLUMNS)


def _view(row: DriftCheckRow) -> DriftCheck:
    return DriftCheck(
        id=row.id,
        deployment=row.deployment,
        arm=row.arm,
        reference=row.reference,
        current=row.current,
        drifted=row.drifted,
        share_drifted=row.share_drifted,
        summary=row.summary,
        report_url=f"/api/v1/monitors/drift/{row.id}/report" if row.report_digest else None,
        created_at=row.created_at,
        created_by=row.created_by,
    )
