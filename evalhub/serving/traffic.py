"""The traffic log: every gateway request journaled on disk first, then written to the database.

`record` appends the record as one JSON line to this process's journal (one `write`, no fsync)
before the gateway answers, so a killed process loses nothing it answered. A writer thread reads
the journal back and inserts it in batches (INSERT ... ON CONFLICT DO NOTHING on the request id,
so a record read twice is stored once) and deletes a journal segment once all of it is stored.
A process that starts replays the segments that dead processes left (a held `flock` marks a
live one). Memory stays bounded whatever the database does: the backlog waits on disk.

A batch that the database refuses because of what a record holds is split until every good
record is stored; a record refused on its own goes to the dead-letter file with its error. A
database that cannot be reached is retried with backoff, the records staying on disk.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import Engine, Table
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlmodel import Session, col, select

from evalhub.db.inserts import insert_new
from evalhub.serving.tables import TrafficRow
from evalhub.serving.traffic_record import TrafficRecord
from registry.entities import Page
from registry.errors import invalid
from registry.paging import fetch_page

log = logging.getLogger(__name__)

TRAFFIC: Table = TrafficRow.__table__  # type: ignore[attr-defined]

SEGMENT_BYTES = 8 * 1024 * 1024
READ_BYTES = 1024 * 1024
ORPHAN_SCAN_SECONDS = 30.0


@dataclass
class _Segment:
    """One journal file: this process appends to it while it is `live`; the writer reads it."""

    path: Path
    fd: int
    live: bool
    read_offset: int = 0
    write_offset: int = 0


def _locked(path: Path, flags: int) -> int | None:
    """The file opened and exclusively locked, or None when a live process holds it."""
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class TrafficLog:
    def __init__(
        self,
        engine: Engine,
        journal: Path,
        *,
        metrics: CollectorRegistry | None = None,
        batch_size: int = 200,
        interval: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        self.engine = engine
        self.journal = journal
        self.dead_letter = journal / "dead-letter.jsonl"
        self.batch_size = batch_size
        self.interval = interval
        self.max_backoff = max_backoff
        self.written = 0
        self.dead = 0
        self._dead_counter = (
            Counter(
                "evalhub_traffic_dead_letter_total",
                "Traffic records the database refused on their own, kept in the dead-letter file.",
                registry=metrics,
            )
            if metrics is not None
            else None
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = False
        self._flushing = 0
        self._pending = 0
        journal.mkdir(parents=True, exist_ok=True)
        self._segments: list[_Segment] = []
        self._segments = self._orphans()
        self._live = self._open_segment()
        self._thread = threading.Thread(target=self._run, name="traffic-log", daemon=True)
        self._thread.start()

    # -- the request path ----------------------------------------------------------------------

    def record(self, record: TrafficRecord) -> None:
        """Journals the record; it is on disk (in the page cache) when this returns."""
        line = record.bounded().model_dump_json().encode() + b"\n"
        with self._lock:
            live = self._live
            os.write(live.fd, line)
            live.write_offset += len(line)
            if live.write_offset >= SEGMENT_BYTES:
                live.live = False
                self._live = self._open_segment()
            self._pending += 1
            if self._pending >= self.batch_size:
                self._changed.notify_all()

    def flush(self, timeout: float = 30) -> bool:
        """Waits until everything recorded so far is in the database (or `timeout` passes)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = [(segment, segment.write_offset) for segment in self._segments]
            self._flushing += 1
            self._changed.notify_all()
            try:
                while any(
                    segment in self._segments and segment.read_offset < offset
                    for segment, offset in target
                ):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._changed.wait(min(left, 0.05))
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float = 30) -> None:
        """Writes what it can within `timeout`; the rest stays journaled for the next start."""
        self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the traffic log writer did not stop; its journal stays for the next start")
            return
        for segment in self._segments:
            if segment.read_offset == segment.write_offset:
                segment.path.unlink(missing_ok=True)  # all of it is stored
            os.close(segment.fd)  # releases the lock: the next start replays what is left
        self._segments.clear()

    @property
    def backlog_bytes(self) -> int:
        with self._lock:
            return sum(s.write_offset - s.read_offset for s in self._segments)

    # -- segments ------------------------------------------------------------------------------

    def _open_segment(self) -> _Segment:
        path = self.journal / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
        fd = _locked(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        assert fd is not None, f"{path} is new; nothing else can hold it"
        segment = _Segment(path=path, fd=fd, live=True)
        self._segments.append(segment)
        return segment

    def _orphans(self) -> list[_Segment]:
        """Segments left by processes that are gone: their records are replayed first."""
        found = []
        held = {segment.path for segment in self._segments}
        for path in sorted(self.journal.glob("*.jsonl")):
            if path == self.dead_letter or path in held:
                continue
            try:
                fd = _locked(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # retired meanwhile by the process that replayed it
            if fd is None:
                continue  # another live process's journal
            if not path.exists():
                os.close(fd)
                continue
            size = os.fstat(fd).st_size
            found.append(_Segment(path=path, fd=fd, live=False, write_offset=size))
        if found:
            log.warning("replaying %d traffic journal segment(s) left by an earlier process",
                        len(found))  # fmt: skip
        return found

    # -- the writer ----------------------------------------------------------------------------

    def _run(self) -> None:
        next_scan = time.monotonic() + ORPHAN_SCAN_SECONDS
        while True:
            with self._lock:
                segment = next(iter(self._segments), None)
                while segment is None or (
                    segment.read_offset == segment.write_offset and segment.live
                ):
                    if self._stopping:
                        return
                    if time.monotonic() >= next_scan:  # a process that died beside this one
                        self._segments[:0] = self._orphans()
                        next_scan = time.monotonic() + ORPHAN_SCAN_SECONDS
                    self._changed.wait(self.interval)
                    segment = next(iter(self._segments), None)
                # Let a batch gather, unless it is full or someone waits for it.
                deadline = time.monotonic() + self.interval
                while (
                    segment.live
                    and self._pending < self.batch_size
                    and not (self._flushing or self._stopping)
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self._changed.wait(left)
                self._pending = 0
                available = segment.write_offset - segment.read_offset
            if available == 0:
                self._retire(segment)
                continue
            rows, consumed = self._read(segment, available)
            if rows and not self._write(rows):
                return  # stopping with the database down: the records stay journaled
            with self._lock:
                segment.read_offset += consumed
                self._changed.notify_all()

    def _read(self, segment: _Segment, available: int) -> tuple[list[dict[str, Any]], int]:
        """Complete lines from the segment's read offset: the rows, and the bytes they took."""
        size = min(available, READ_BYTES)
        while True:
            chunk = os.pread(segment.fd, size, segment.read_offset)
            end = chunk.rfind(b"\n") + 1
            if end or size >= available:
                break
            size = min(available, size * 2)  # one record longer than the chunk
        if not end:
            # Only a finished segment ends without a newline: a line a crash cut short.
            self._kill(chunk.decode(errors="replace"), "a line cut short by a crash")
            return [], len(chunk)
        rows = []
        for line in chunk[:end].splitlines():
            try:
                row = json.loads(line)
                row["created_at"] = datetime.fromisoformat(row["created_at"])
            except (ValueError, KeyError, TypeError) as error:
                self._kill(line.decode(errors="replace"), f"unreadable: {error}")
                continue
            rows.append(row)
        return rows, end

    def _retire(self, segment: _Segment) -> None:
        with self._lock:
            self._segments.remove(segment)
            self._changed.notify_all()
        segment.path.unlink(missing_ok=True)
        os.close(segment.fd)

    def _write(self, rows: list[dict[str, Any]]) -> bool:
        """True once every row is stored or set aside; False if stopping first."""
        attempt = 0
        while True:
            try:
                self._insert(rows)
                return True
            except Exception as error:
                if _record_fault(error):
                    return self._split(rows, error)
                attempt += 1
                if attempt & (attempt - 1) == 0:  # 1, 2, 4, 8, ...: an outage is not a flood
                    log.warning("traffic log write of %d records failed (attempt %d): %s",
                                len(rows), attempt, str(error).splitlines()[0])  # fmt: skip
                with self._lock:
                    if self._stopping:
                        return False
                    self._changed.wait(min(self.max_backoff, 0.1 * 2**attempt))

    def _split(self, rows: list[dict[str, Any]], error: Exception) -> bool:
        """Stores every record the database takes; the ones it refuses alone are set aside."""
        if len(rows) == 1:
            self._kill(json.dumps(rows[0], default=str), str(error).splitlines()[0])
            return True
        middle = len(rows) // 2
        return self._write(rows[:middle]) and self._write(rows[middle:])

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert_new(connection, TRAFFIC, ["id"]), rows)
        self.written += len(rows)

    def _kill(self, line: str, error: str) -> None:
        entry = json.dumps({"error": error, "record": line})
        with self.dead_letter.open("a", encoding="utf-8") as handle:
            handle.write(entry + "\n")
        self.dead += 1
        if self._dead_counter is not None:
            self._dead_counter.inc()
        log.error("traffic record set aside in %s: %s", self.dead_letter, error)


def _record_fault(error: Exception) -> bool:
    """True when the database refused what a record holds, not when it could not be reached."""
    if isinstance(error, DataError | IntegrityError):
        return True
    if isinstance(error, DBAPIError):
        return False  # operational, programming, interface: the database's state, not the data
    return isinstance(error, StatementError | TypeError | ValueError | OverflowError)


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
        rows, more = fetch_page(session, query, limit)
    # The key is (time, id): records are listed by when they were made, not stored.
    token = f"{rows[-1].created_at.isoformat()}|{rows[-1].id}" if more else None
    return Page(
        data=[TrafficRecord.model_validate(r, from_attributes=True) for r in rows],
        next_page_token=token,
    )
