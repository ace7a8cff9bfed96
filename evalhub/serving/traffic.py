"""The traffic log: every gateway request, written in batches off the request path.

`record` only enqueues; a writer thread inserts batches in one transaction each. `flush` waits
until everything recorded so far is committed, and `close` flushes before it returns, so the
server's shutdown loses nothing it accepted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, insert
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
    def __init__(self, engine: Engine, *, batch_size: int = 200, interval: float = 0.2) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.interval = interval
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="traffic-log", daemon=True)
        self._thread.start()
        self.written = 0

    def record(self, row: dict[str, Any]) -> None:
        self._queue.put(row)

    def flush(self, timeout: float = 30) -> None:
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(60)

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
            if batch:
                self._write(batch)
            for waiter in waiters:
                waiter.set()
            if stop:
                while not self._queue.empty():  # whatever arrived before the stop
                    item = self._queue.get()
                    if isinstance(item, dict):
                        self._write([item])
                    elif isinstance(item, threading.Event):
                        item.set()
                return

    def _write(self, batch: list[dict[str, Any]]) -> None:
        for attempt in range(5):
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(TrafficRow), batch)
                self.written += len(batch)
                return
            except Exception:  # the database may be briefly unavailable; keep the records
                log.exception("traffic log write failed (attempt %d)", attempt + 1)
                time.sleep(0.2 * 2**attempt)
        log.error("dropping %d traffic records after repeated failures", len(batch))


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
