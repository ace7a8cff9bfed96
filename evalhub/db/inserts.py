"""One INSERT that skips rows whose key is already stored, on SQLite and PostgreSQL: for writers
that may race or replay (the traffic log, online scores, embeddings)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, insert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

T = TypeVar("T")

#: PostgreSQL takes at most 65,535 parameters in one statement: lists of ids go in chunks.
CHUNK = 10_000


def insert_new(connection: Connection, table: Table, keys: Sequence[str]) -> Any:
    if connection.dialect.name == "postgresql":
        return postgresql_insert(table).on_conflict_do_nothing(index_elements=list(keys))
    if connection.dialect.name == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(keys))
    return insert(table)


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
