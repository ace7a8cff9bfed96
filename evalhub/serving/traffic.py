"""The traffic log: every gateway request, written in batches off the request path.

`record` only enqueues; a writer thread inserts batches in one transaction each. `flush` waits
until everything recorded so far is committed, and `close` flushes before it returns, so the
server's shutdown loses nothing it accepted, not even while the database is down.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, insert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from evalhub.serving.tables import TrafficRow
from registry.entities import Page
from registry.errors import invalid

log = logging.getLogger(__name__)

_STOP = object()


class TrafficRecord(BaseModel):
    id: str
    created_at: datetime
    deployment: str | None
    arm: str | None
    model: str
    version: str | None
    digest: str | None
    user: str | None
    endpoint: str
    request: dict[str, Any]
    response_text: str | None
    status: int
    error: str | None
    stream: bool
    latency_ms: float
    ttft_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float | None


class TrafficLog:
    """A writer thread that inserts what `record` enqueues, in batches, and never drops a record.

    While the database is unreachable it keeps the records and retries; if it is still down when
    the server shuts down, they go to the `spill` file (JSON lines), which the next TrafficLog on
    the same file writes first.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        spill: Path | None = None,
        batch_size: int = 200,
        interval: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        self.engine = engine
        self.spill = spill
        self.batch_size = batch_size
        self.interval = interval
        self.max_backoff = max_backoff
        self.written = 0
        self.spilled = 0
        self._stopping = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue()
        for row in self._take_spill():
            self._queue.put(row)
        self._thread = threading.Thread(target=self._run, name="traffic-log", daemon=True)
        self._thread.start()

    def record(self, row: dict[str, Any]) -> None:
        self._queue.put(row)

    def flush(self, timeout: float = 30) -> None:
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        self._stopping.set()
        self._queue.put(_STOP)
        self._thread.join(120)

    def _run(self) -> None:
        while True:
            batch: list[dict[str, Any]] = []
            waiters: list[threading.Event] = []
            stop = False
            deadline = time.monotonic() + self.interval
            while len(batch) < self.batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                if isinstance(item, threading.Event):
                    waiters.append(item)
                    break
                batch.append(item)
            if stop:  # and whatever arrived before the stop
                while not self._queue.empty():
                    item = self._queue.get()
                    if isinstance(item, dict):
                        batch.append(item)
                    elif isinstance(item, threading.Event):
                        waiters.append(item)
            if batch:
                self._write(batch)
            for waiter in waiters:
                waiter.set()
            if stop:
                return

    def _write(self, batch: list[dict[str, Any]]) -> None:
        attempt = 0
        while True:
            try:
                with self.engine.begin() as connection:
                    connection.execute(_insert_new(connection), batch)
                self.written += len(batch)
                return
            except Exception:  # the database may be unreachable for a while; keep the records
                attempt += 1
                log.exception("traffic log write of %d records failed (attempt %d)",
                              len(batch), attempt)  # fmt: skip
                if self._stopping.is_set() and attempt >= 3 and self._save_spill(batch):
                    return
                time.sleep(min(self.max_backoff, 0.1 * 2**attempt))

    def _save_spill(self, batch: list[dict[str, Any]]) -> bool:
        if self.spill is None:
            return False
        self.spill.parent.mkdir(parents=True, exist_ok=True)
        with self.spill.open("a", encoding="utf-8") as handle:
            for row in batch:
                handle.write(json.dumps(row, default=_iso) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.spilled += len(batch)
        log.error("database unreachable at shutdown: %d traffic records kept in %s",
                  len(batch), self.spill)  # fmt: skip
        return True

    def _take_spill(self) -> list[dict[str, Any]]:
        if self.spill is None or not self.spill.exists():
            return []
        rows, unreadable = [], []
        for line in self.spill.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row["created_at"] = datetime.fromisoformat(row["created_at"])
            except (ValueError, KeyError, TypeError):  # a line cut short by a crash
                unreadable.append(line)
                continue
            rows.append(row)
        if unreadable:
            kept = self.spill.with_suffix(".unreadable")
            with kept.open("a", encoding="utf-8") as handle:
                handle.writelines(line + "\n" for line in unreadable)
            log.error("%d traffic records in %s cannot be read; kept in %s",
                      len(unreadable), self.spill, kept)  # fmt: skip
        self.spill.unlink()
        log.warning("writing %d traffic records kept from an earlier shutdown", len(rows))
        return rows


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _insert_new(connection: Any) -> Any:
    """An INSERT that skips ids already stored: a replayed record is written once."""
    table = TrafficRow.__table__  # type: ignore[attr-defined]
    if connection.dialect.name == "postgresql":
        return postgresql_insert(table).on_conflict_do_nothing(index_elements=["id"])
    if connection.dialect.name == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing(index_elements=["id"])
    return insert(table)


def search_traffic(
    engine: Engine,
    *,
    deployment: str | None = None,
    arm: str | None = None,
    version: str | None = None,
    status: int | None = None,
    limit: int = 100,
    page_token: str | None = None,
) -> Page[TrafficRecord]:
    """Newest first; the page token is the last record's id-time pair."""
    query = select(TrafficRow)
    if deployment:
        query = query.where(TrafficRow.deployment == deployment)
    if arm:
        query = query.where(TrafficRow.arm == arm)
    if version:
        query = query.where(TrafficRow.version == version)
    if status is not None:
        query = query.where(TrafficRow.status == status)
    if page_token:
        try:
            stamp, _, last_id = page_token.partition("|")
            before = datetime.fromisoformat(stamp)
        except ValueError as error:
            raise invalid(f"invalid page_token {page_token!r}") from error
        query = query.where(
            (col(TrafficRow.created_at) < before)
            | ((col(TrafficRow.created_at) == before) & (col(TrafficRow.id) < last_id))
        )
    query = query.order_by(col(TrafficRow.created_at).desc(), col(TrafficRow.id).desc())
    with Session(engine) as session:
        rows = list(session.exec(query.limit(limit + 1)))
    token = None
    if len(rows) > limit:
        last = rows[limit - 1]
        token = f"{last.created_at.isoformat()}|{last.id}"
    return Page(
        data=[TrafficRecord.model_validate(r, from_attributes=True) for r in rows[:limit]],
        next_page_token=token,
    )
