"""Generation caches: a key is the sha256 of everything that decides an answer.

A `GenerationCache` maps that key to a JSON-able record. Two implementations live here (in
memory, and a SQLite file in WAL mode); anything with `get` and `put` can stand in.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from evalhub.sampling import SamplingParams


@runtime_checkable
class GenerationCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...


def cache_key(**parts: Any) -> str:
    """sha256 of the parts as canonical JSON: the same inputs give the same key everywhere."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def generation_key(
    cache_identity: str,
    messages: list[dict[str, Any]],
    sampling: SamplingParams,
    repeat: int,
) -> str:
    """The key of one generation: identity of the model, exact messages, sampling, seed, repeat."""
    return cache_key(
        kind="generation",
        identity=cache_identity,
        messages=messages,
        sampling=sampling.model_dump(mode="json"),
        seed=sampling.seed,
        repeat=repeat,
    )


class InMemoryCache:
    """A dict with hit counts; lives as long as the process."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self.hits += 1
            return dict(value)

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._items[key] = dict(value)

    def __len__(self) -> int:
        return len(self._items)


class SQLiteCache:
    """A cache in one SQLite file (WAL, so readers never block the writer); safe across threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS generation_cache ("
            "key TEXT PRIMARY KEY, value TEXT NOT NULL, created_at REAL NOT NULL)"
        )
        self._connection.commit()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._connection.execute(
                "SELECT value FROM generation_cache WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            return json.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO generation_cache (key, value, created_at) VALUES (?, ?, ?)",
                (key, json.dumps(value, ensure_ascii=False), time.time()),
            )
            self._connection.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._connection.execute("SELECT COUNT(*) FROM generation_cache").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._connection.close()
