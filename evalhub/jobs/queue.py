"""A job queue in the database: submit, claim (SKIP LOCKED on PostgreSQL), events, cancel, requeue.

Workers on any machine claim queued jobs; a job whose worker stops heartbeating goes back to the
queue and its handler resumes from its own checkpoints.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select

from evalhub.jobs.tables import JobEventRow, JobRow
from registry.db import writer
from registry.entities import Page
from registry.errors import ErrorCode, RegistryError, not_found
from registry.paging import decode_page_token, encode_page_token, fetch_page, page_of
from registry.tables import utcnow


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


class Job(BaseModel):
    id: str
    kind: str
    status: JobStatus
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    worker_id: str | None
    attempts: int
    cancel_requested: bool


class JobEvent(BaseModel):
    id: int
    job_id: str
    created_at: datetime
    level: str
    message: str
    data: dict[str, Any] | None


def new_job_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


class JobQueue:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)
        # Set when this process queues a job, so its own workers claim it at once instead of at
        # their next poll; workers elsewhere still find it by polling.
        self._queued = threading.Event()

    def wait_for_work(self, timeout: float) -> None:
        """Returns when this process queues a job (or `wake` is called), or after `timeout`."""
        self._queued.wait(timeout)
        self._queued.clear()

    def wake(self) -> None:
        self._queued.set()

    def submit(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        actor: str = "",
        job_id: str | None = None,
        status: JobStatus = JobStatus.QUEUED,
        message: str | None = None,
    ) -> Job:
        """Persists the job (and its first event) before returning: acknowledged means stored."""
        job_id = job_id or new_job_id(kind)
        with Session(self._writer, expire_on_commit=False) as session:
            seq = session.exec(select(func.max(JobRow.seq))).one() or 0
            row = JobRow(
                id=job_id, seq=seq + 1, kind=kind, status=status, payload=payload, created_by=actor
            )
            session.add(row)
            session.flush()
            session.add(JobEventRow(job_id=job_id, message=message or f"{kind} job created"))
            session.commit()
        if status is JobStatus.QUEUED:
            self.wake()
        return _job(row)

    def get(self, job_id: str, *, kind: str | None = None, noun: str = "job") -> Job:
        """The job; with `kind`, a job of another kind is as missing as no job ("no {noun} ...")."""
        with Session(self.engine) as session:
            row = session.get(JobRow, job_id)
        if row is None or (kind is not None and row.kind != kind):
            raise not_found(f"no {noun} {job_id!r}")
        return _job(row)

    def search(
        self,
        *,
        kind: str | None = None,
        limit: int = 20,
        page_token: str | None = None,
        newest_first: bool = True,
    ) -> Page[Job]:
        after = decode_page_token(page_token)
        query = select(JobRow)
        if kind:
            query = query.where(JobRow.kind == kind)
        order = col(JobRow.seq).desc() if newest_first else col(JobRow.seq)
        if after is not None:
            query = query.where(
                col(JobRow.seq) < after if newest_first else col(JobRow.seq) > after
            )
        with Session(self.engine) as session:
            rows, more = fetch_page(session, query.order_by(order), limit)
        return page_of(rows, more, _job, key=lambda row: row.seq)

    def add_event(
        self, job_id: str, message: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        with Session(self.engine) as session:
            session.add(JobEventRow(job_id=job_id, level=level, message=message, data=data))
            session.commit()

    def events(
        self, job_id: str, *, after: int | None = None, limit: int | None = 1000
    ) -> list[JobEvent]:
        """Oldest first, from after event id `after`; `limit=None` reads them all."""
        with Session(self.engine) as session:
            _get(session, job_id)
            query = select(JobEventRow).where(JobEventRow.job_id == job_id)
            if after is not None:
                query = query.where(col(JobEventRow.id) > after)
            query = query.order_by(col(JobEventRow.id))
            if limit is not None:
                query = query.limit(limit)
            return [_event(row) for row in session.exec(query)]

    def latest_events(
        self, job_id: str, *, before: int | None = None, limit: int = 20
    ) -> tuple[list[JobEvent], bool]:
        """Newest first, from before event id `before`; and whether there are more."""
        with Session(self.engine) as session:
            _get(session, job_id)
            query = select(JobEventRow).where(JobEventRow.job_id == job_id)
            if before is not None:
                query = query.where(col(JobEventRow.id) < before)
            rows, more = fetch_page(session, query.order_by(col(JobEventRow.id).desc()), limit)
            return [_event(row) for row in rows], more

    def page_token_after(self, job_id: str) -> str:
        """The `search` page token that continues after this job (a client-facing cursor)."""
        with Session(self.engine) as session:
            seq = _get(session, job_id).seq
        assert seq is not None, "every job is given its seq when submitted"
        return encode_page_token(seq)

    def set_status(self, job_id: str, status: JobStatus, message: str | None = None) -> Job:
        """For phases before a worker owns the job (e.g. validating files before queueing)."""
        with Session(self._writer, expire_on_commit=False) as session:
            row = _get(session, job_id)
            row.status = status
            if status.finished:
                row.finished_at = utcnow()
            session.add(row)
            if message:
                session.add(JobEventRow(job_id=job_id, message=message))
            session.commit()
        if status is JobStatus.QUEUED:
            self.wake()
        return _job(row)

    def cancel(self, job_id: str, *, actor: str = "") -> Job:
        """A queued job is cancelled at once; a running one is asked to stop at its next check."""
        with Session(self._writer, expire_on_commit=False) as session:
            row = _get(session, job_id, lock=True)
            status = JobStatus(row.status)
            if status.finished:
                raise RegistryError(
                    ErrorCode.FAILED_PRECONDITION, f"job {job_id} already {status.value}"
                )
            if status is JobStatus.RUNNING:
                row.cancel_requested = True
                message = f"cancellation requested by {actor or 'a user'}"
            else:
                row.status = JobStatus.CANCELLED
                row.finished_at = utcnow()
                message = f"cancelled by {actor or 'a user'}"
            session.add(row)
            session.add(JobEventRow(job_id=job_id, message=message))
            session.commit()
            return _job(row)

    def claim(self, worker_id: str, kinds: Iterable[str]) -> Job | None:
        """Takes the oldest queued job of these kinds; concurrent workers never take the same one."""
        kinds = list(kinds)
        with Session(self._writer, expire_on_commit=False) as session:
            query = (
                select(JobRow)
                .where(JobRow.status == JobStatus.QUEUED, col(JobRow.kind).in_(kinds))
                .order_by(col(JobRow.seq))
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            row = session.exec(query).first()
            if row is None:
                return None
            now = utcnow()
            row.status = JobStatus.RUNNING
            row.worker_id = worker_id
            row.started_at = row.started_at or now
            row.heartbeat_at = now
            row.attempts += 1
            session.add(row)
            resumed = " (resuming)" if row.attempts > 1 else ""
            session.add(JobEventRow(job_id=row.id, message=f"started on {worker_id}{resumed}"))
            session.commit()
            return _job(row)

    def heartbeat(self, job_id: str, worker_id: str) -> bool:
        """Records liveness; returns whether cancellation was requested."""
        with Session(self.engine) as session:
            session.exec(
                update(JobRow)
                .where(col(JobRow.id) == job_id, col(JobRow.worker_id) == worker_id)
                .values(heartbeat_at=utcnow())
            )
            session.commit()
            row = session.get(JobRow, job_id)
            return bool(row and row.cancel_requested)

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        message: str | None = None,
    ) -> Job:
        with Session(self._writer, expire_on_commit=False) as session:
            row = _get(session, job_id, lock=True)
            row.status = status
            row.result = result
            row.error = error
            row.finished_at = utcnow()
            session.add(row)
            text = message or (f"{status.value}: {error}" if error else status.value)
            session.add(
                JobEventRow(job_id=job_id, level="error" if error else "info", message=text)
            )
            session.commit()
            return _job(row)

    def defer(self, job_id: str, message: str) -> Job:
        """Back to the end of the queue, as if submitted now: a job that waits for jobs queued
        after it (an experiment for its trials) lets them go first. Not counted as an attempt."""
        with Session(self._writer, expire_on_commit=False) as session:
            row = _get(session, job_id, lock=True)
            row.seq = (session.exec(select(func.max(JobRow.seq))).one() or 0) + 1
            row.status = JobStatus.QUEUED
            row.worker_id = None
            row.attempts = max(0, row.attempts - 1)
            session.add(row)
            session.add(JobEventRow(job_id=job_id, message=message))
            session.commit()
        self.wake()
        return _job(row)

    def requeue_stale(self, older_than: timedelta) -> list[str]:
        """Running jobs whose worker stopped heartbeating go back to the queue."""
        cutoff = utcnow() - older_than
        with Session(self._writer, expire_on_commit=False) as session:
            rows = list(
                session.exec(
                    select(JobRow)
                    .where(JobRow.status == JobStatus.RUNNING, col(JobRow.heartbeat_at) < cutoff)
                    .with_for_update(skip_locked=True)
                )
            )
            for row in rows:
                row.status = JobStatus.QUEUED
                session.add(row)
                session.add(
                    JobEventRow(
                        job_id=row.id,
                        level="warning",
                        message=f"worker {row.worker_id} stopped responding; job requeued",
                    )
                )
            session.commit()
            return [row.id for row in rows]


def _get(session: Session, job_id: str, *, lock: bool = False) -> JobRow:
    query = select(JobRow).where(JobRow.id == job_id)
    if lock:
        query = query.with_for_update()
    row = session.exec(query).first()
    if row is None:
        raise not_found(f"no job {job_id!r}")
    return row


def _job(row: JobRow) -> Job:
    return Job.model_validate(row, from_attributes=True)


def _event(row: JobEventRow) -> JobEvent:
    return JobEvent.model_validate(row, from_attributes=True)
