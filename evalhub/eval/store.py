"""Eval runs and case results in the database, and the generation cache that outlives processes.

Generations are stored one by one as they finish (the runner's sink), so a run whose worker
dies keeps its work: `generations()` hands it back to resume from.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Engine, bindparam, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from evalhub.eval.record import CaseResult, EvalRun, GenerationRecord
from evalhub.eval.tables import EvalCaseRow, EvalRunRow, GenerationCacheRow
from registry.db import writer
from registry.entities import Page
from registry.errors import ErrorCode, RegistryError, not_found
from registry.paging import decode_page_token, fetch_page, page_of
from registry.tables import utcnow

RUN_ID_PREFIX = "evalrun-"


def new_run_id() -> str:
    return f"{RUN_ID_PREFIX}{secrets.token_hex(12)}"


class EvalRunInfo(BaseModel):
    """A stored run as the API shows it: identity, target, status and metric summaries."""

    id: str
    job_id: str | None
    status: str
    error: str | None
    suite_name: str
    suite_version: str
    suite_digest: str
    dataset_ref: str
    dataset_version: str | None
    dataset_digest: str
    model: str
    model_version: str | None = Field(description="exact registry version, when a ref was given")
    model_digest: str | None
    base_url: str | None
    endpoint_model: str
    cache_identity: str
    options: dict[str, Any]
    metrics: dict[str, Any]
    overall_score: float | None
    passed: bool | None
    case_count: int
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EvalCaseInfo(BaseModel):
    """One generation of one case; `scores` are the case's (repeats combined), once scored."""

    case_id: str
    repeat: int
    output: str
    scores: dict[str, Any] | None
    tags: list[str]
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float | None
    ttft_s: float | None
    finish_reason: str | None
    cached: bool
    model: str | None


def metric_summaries(run: EvalRun) -> dict[str, Any]:
    """Each metric's aggregate under its name, with its threshold verdict."""
    return {
        name: {
            "metric": summary.spec.name,
            "value": summary.aggregate.value,
            "count": summary.aggregate.count,
            "details": summary.aggregate.details,
            "threshold": summary.spec.threshold,
            "passed": summary.passed,
            "higher_is_better": summary.higher_is_better,
        }
        for name, summary in run.metrics.items()
    }


class EvalStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    def create(self, row: EvalRunRow) -> EvalRunInfo:
        with Session(self._writer, expire_on_commit=False) as session:
            row.seq = (session.exec(select(func.max(EvalRunRow.seq))).one() or 0) + 1
            session.add(row)
            session.commit()
            return _info(row)

    def row(self, run_id: str) -> EvalRunRow:
        with Session(self.engine, expire_on_commit=False) as session:
            return _get(session, run_id)

    def get(self, run_id: str) -> EvalRunInfo:
        return _info(self.row(run_id))

    def run(self, run_id: str) -> EvalRun:
        """The full run log of a finished run."""
        row = self.row(run_id)
        if row.run is None:
            raise RegistryError(
                ErrorCode.FAILED_PRECONDITION,
                f"eval run {run_id} is {row.status}; its results exist once it has finished",
            )
        return EvalRun.model_validate(row.run)

    def search(
        self, *, suite: str | None = None, limit: int = 50, page_token: str | None = None
    ) -> Page[EvalRunInfo]:
        """Newest first."""
        after = decode_page_token(page_token)
        query = select(EvalRunRow)
        if suite:
            query = query.where(EvalRunRow.suite_name == suite)
        if after is not None:
            query = query.where(col(EvalRunRow.seq) < after)
        with Session(self.engine) as session:
            rows, more = fetch_page(session, query.order_by(col(EvalRunRow.seq).desc()), limit)
        return page_of(rows, more, _info, key=lambda row: row.seq)

    def cases(
        self, run_id: str, *, limit: int = 100, page_token: str | None = None
    ) -> Page[EvalCaseInfo]:
        after = decode_page_token(page_token)
        with Session(self.engine) as session:
            _get(session, run_id)
            query = select(EvalCaseRow).where(EvalCaseRow.run_id == run_id)
            if after is not None:
                query = query.where(col(EvalCaseRow.id) > after)
            rows, more = fetch_page(session, query.order_by(col(EvalCaseRow.id)), limit)
        return page_of(
            rows, more, lambda row: EvalCaseInfo.model_validate(row, from_attributes=True)
        )

    def set_status(self, run_id: str, status: str, *, job_id: str | None = None) -> None:
        with Session(self._writer) as session:
            row = _get(session, run_id)
            row.status = status
            row.error = None
            if job_id is not None:
                row.job_id = job_id
            if status == "running" and row.started_at is None:
                row.started_at = utcnow()
            session.add(row)
            session.commit()

    def add_generation(self, run_id: str, record: GenerationRecord, tags: list[str]) -> None:
        with Session(self._writer) as session:
            session.add(_case_row(run_id, record, tags))
            session.commit()

    def generations(self, run_id: str) -> list[GenerationRecord]:
        """What a run has already finished, to resume it without generating again."""
        with Session(self.engine) as session:
            rows = session.exec(select(EvalCaseRow).where(EvalCaseRow.run_id == run_id))
            return [
                GenerationRecord(
                    case_id=row.case_id,
                    repeat=row.repeat,
                    key=row.generation_key,
                    output=row.output,
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    latency_s=row.latency_s,
                    ttft_s=row.ttft_s,
                    finish_reason=row.finish_reason,
                    cached=row.cached,
                    model=row.model,
                )
                for row in rows
            ]

    def finish(self, run: EvalRun) -> EvalRunInfo:
        """Stores the outcome: status, summaries, the run log, and each case's scores."""
        with Session(self._writer, expire_on_commit=False) as session:
            row = _get(session, run.run_id)
            _apply_outcome(row, run)
            session.add(row)
            session.flush()
            _store_scores(session, run.run_id, run.results)
            session.commit()
            return _info(row)

    def fail(self, run_id: str, error: str) -> None:
        with Session(self._writer) as session:
            row = _get(session, run_id)
            row.status = "failed"
            row.error = error
            row.finished_at = utcnow()
            session.add(row)
            session.commit()

    def import_run(self, row: EvalRunRow, run: EvalRun) -> EvalRunInfo:
        """Stores a run finished elsewhere (the CLI against an endpoint) with all its cases."""
        with Session(self._writer, expire_on_commit=False) as session:
            if session.get(EvalRunRow, row.id) is not None:
                raise RegistryError(ErrorCode.ALREADY_EXISTS, f"eval run {row.id} already exists")
            row.seq = (session.exec(select(func.max(EvalRunRow.seq))).one() or 0) + 1
            _apply_outcome(row, run)
            session.add(row)
            session.flush()
            for result in run.results:
                for generation in result.generations:
                    case = _case_row(run.run_id, generation, result.tags)
                    case.scores = _scores_json(result)
                    session.add(case)
            session.commit()
            return _info(row)


class DatabaseCache:
    """The generation cache as a table: shared by every worker on the platform database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            row = session.get(GenerationCacheRow, key)
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return dict(row.value)

    def put(self, key: str, value: dict[str, Any]) -> None:
        # An upsert: two runs of the same version may finish the same generation together.
        dialect = sqlite if self.engine.dialect.name == "sqlite" else postgresql
        statement = dialect.insert(GenerationCacheRow).values(
            key=key, value=value, created_at=utcnow()
        )
        statement = statement.on_conflict_do_update(
            index_elements=["key"], set_={"value": statement.excluded.value}
        )
        with Session(writer(self.engine)) as session:
            session.execute(statement)
            session.commit()


def _get(session: Session, run_id: str) -> EvalRunRow:
    row = session.get(EvalRunRow, run_id)
    if row is None:
        raise not_found(f"no eval run {run_id!r}")
    return row


def _info(row: EvalRunRow) -> EvalRunInfo:
    return EvalRunInfo.model_validate(row, from_attributes=True)


def _case_row(run_id: str, record: GenerationRecord, tags: list[str]) -> EvalCaseRow:
    return EvalCaseRow(
        run_id=run_id,
        case_id=record.case_id,
        repeat=record.repeat,
        output=record.output,
        tags=tags,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        latency_s=record.latency_s,
        ttft_s=record.ttft_s,
        finish_reason=record.finish_reason,
        cached=record.cached,
        generation_key=record.key,
        model=record.model,
    )


def _scores_json(result: CaseResult) -> dict[str, Any]:
    return {name: score.model_dump(mode="json") for name, score in result.scores.items()}


def _apply_outcome(row: EvalRunRow, run: EvalRun) -> None:
    row.status = run.status
    row.error = run.error
    row.metrics = metric_summaries(run)
    row.overall_score = run.overall_score
    row.passed = run.passed if run.status == "completed" else None
    row.case_count = len(run.results)
    row.run = run.model_dump(mode="json")
    row.started_at = row.started_at or run.started_at
    row.finished_at = run.finished_at or utcnow()


def _store_scores(session: Session, run_id: str, results: list[CaseResult]) -> None:
    table = EvalCaseRow.__table__  # type: ignore[attr-defined]
    statement = (
        table.update()
        .where(table.c.run_id == bindparam("b_run"), table.c.case_id == bindparam("b_case"))
        .values(scores=bindparam("b_scores"))
    )
    values = [
        {"b_run": run_id, "b_case": result.case_id, "b_scores": _scores_json(result)}
        for result in results
        if result.scores
    ]
    if values:
        session.connection().execute(statement, values)
