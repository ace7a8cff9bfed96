"""Change events: every committed change, to subscribers in this process and in the others.

A service records a change inside its own transaction (`ChangeBus.record`): the audit entry is
written there, and the event reaches subscribers after the commit, never for a refused or
rolled-back change. Other processes on the same database learn of it too: on PostgreSQL the
transaction sends a NOTIFY, which PostgreSQL delivers only on commit, to a LISTEN thread in each
process; on SQLite (one host) a thread reads the audit log's new rows every `poll_seconds`
(0.25 s), so another process sees a change within about a quarter of a second.

The audit log is the event log: a change event is its audit entry, with the same id.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, event, func, text
from sqlmodel import Session, col, select

from evalhub.audit import record_mutation
from evalhub.db.tables import AuditRow
from registry.entities import Mutation

log = logging.getLogger(__name__)

CHANNEL = "evalhub_changes"
_PENDING = "evalhub.pending_changes"
_REMEMBERED = 10_000  # delivered ids kept to drop the copy that comes back from the database


class Change(BaseModel):
    """A committed change: what was changed (`resource`, e.g. "models/bot/aliases/production"),
    how (`action`, e.g. "alias.set"), by whom, and the state before and after."""

    id: int
    at: datetime
    actor: str
    action: str
    resource: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: AuditRow) -> Change:
        return cls.model_validate(row, from_attributes=True)

    @property
    def model(self) -> str | None:
        """The model a change is about, for "models/<name>/..." resources."""
        parts = self.resource.split("/")
        return parts[1] if parts[0] == "models" and len(parts) > 1 else None


Subscriber = Callable[[Change], None]


class ChangeBus:
    def __init__(self, engine: Engine, *, poll_seconds: float = 0.25) -> None:
        self.engine = engine
        self.poll_seconds = poll_seconds
        self.postgres = engine.dialect.name == "postgresql"
        self._space = self._schema() if self.postgres else ""
        self._subscribers: list[Subscriber] = []
        self._delivered: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- publishing --------------------------------------------------------------------------

    def record(self, session: Session, mutation: Mutation) -> None:
        """Writes the audit entry in `session`'s transaction; subscribers hear of it on commit."""
        row = record_mutation(session, mutation)
        session.flush()
        if _PENDING not in session.info:
            session.info[_PENDING] = []
            event.listen(session, "after_commit", self._after_commit)
            event.listen(session, "after_rollback", _forget_pending)
        session.info[_PENDING].append(Change.of(row))
        if self.postgres:
            session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL, "payload": f"{self._space}:{row.id}"},
            )

    def _after_commit(self, session: Session) -> None:
        changes, session.info[_PENDING] = session.info[_PENDING], []
        for change in changes:
            self._deliver(change)

    def _deliver(self, change: Change) -> None:
        with self._lock:
            if change.id in self._delivered:
                return
            self._delivered[change.id] = None
            while len(self._delivered) > _REMEMBERED:
                self._delivered.popitem(last=False)
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                subscriber(change)
            except Exception:  # one subscriber's fault must not stop the others or the commit
                log.exception("change subscriber %r failed on %s", subscriber, change.action)

    # -- subscribing -------------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Calls `subscriber` for every change committed from now on, here or elsewhere; returns
        the call that unsubscribes. It runs on the committing thread or the watcher's thread."""
        with self._lock:
            self._subscribers.append(subscriber)
            if self._watcher is None:
                start = self._latest_id()
                self._watcher = threading.Thread(
                    target=self._watch, args=(start,), name="evalhub-changes", daemon=True
                )
                self._watcher.start()

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    # -- other processes' changes ------------------------------------------------------------

    def _watch(self, after: int) -> None:
        while not self._stop.is_set():
            try:
                after = self._listen(after) if self.postgres else self._poll(after)
            except Exception as error:  # the database went away: retry, and catch up after
                log.warning("watching for changes: %s; retrying", error)
                self._stop.wait(1.0)

    def _poll(self, after: int) -> int:
        """SQLite serialises writers, so audit ids commit in order: everything past `after`."""
        while not self._stop.wait(self.poll_seconds):
            after = self._catch_up(after)
        return after

    def _listen(self, after: int) -> int:
        import psycopg

        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        with psycopg.connect(*args, **kwargs, autocommit=True) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            after = self._catch_up(after)  # what committed while no one listened
            while not self._stop.is_set():
                for note in connection.notifies(timeout=1.0):
                    space, _, change_id = note.payload.rpartition(":")
                    if space == self._space and change_id.isdigit():
                        self._read(col(AuditRow.id) == int(change_id))
                        after = max(after, int(change_id))
        return after

    def _catch_up(self, after: int) -> int:
        return self._read(col(AuditRow.id) > after, after)

    def _read(self, where: Any, after: int = 0) -> int:
        with Session(self.engine) as session:
            rows = list(session.exec(select(AuditRow).where(where).order_by(col(AuditRow.id))))
        for row in rows:
            self._deliver(Change.of(row))
            after = max(after, row.id or 0)
        return after

    def _latest_id(self) -> int:
        with Session(self.engine) as session:
            return int(session.exec(select(func.max(AuditRow.id))).one() or 0)

    def _schema(self) -> str:
        with self.engine.connect() as connection:
            return str(connection.execute(text("SELECT current_schema()")).scalar_one())


def _forget_pending(session: Session) -> None:
    session.info[_PENDING] = []
