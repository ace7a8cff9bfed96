"""Which adapters each backend has loaded, loading on demand and unloading when nothing uses them.

Adapters are loaded under a name that carries their digest, so re-registered weights can never be
answered from a stale adapter. Loads of one name are serialised by a lock; an adapter is unloaded
only when no request is in flight on it and no arm points at it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp

from registry.entities import ModelVersion


class BackendUnavailable(Exception):
    """The backend did not answer, or answered with a server error."""


class AdapterLoadFailed(Exception):
    """The backend refused the adapter (for example vLLM refusing DoRA)."""


IDENTITY_PREFIX = "identity-"


def adapter_name(version: ModelVersion) -> str:
    """`bot-v3-3376ce2deea1`: readable, and different whenever the weights differ."""
    return f"{version.model}-v{version.version}-{version.digest.removeprefix('sha256:')[:12]}"


class AdapterSet:
    """The adapters loaded on one backend, on every one of its replicas."""

    def __init__(self, urls: list[str], materialize: Callable[[str], Path]) -> None:
        self.urls = list(urls)
        self.roots = [url.removesuffix("/v1") for url in urls]
        self.materialize = materialize
        self.loaded: dict[str, str] = {}
        self.in_flight: Counter[str] = Counter()
        self.last_used: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, session: aiohttp.ClientSession, version: ModelVersion) -> str:
        return await self.ensure_named(
            session, adapter_name(version), lambda: self.materialize(version.digest), version.ref
        )

    async def ensure_named(
        self,
        session: aiohttp.ClientSession,
        name: str,
        locate: Callable[[], Path],
        label: str,
    ) -> str:
        """Loads `locate()` under `name` on every replica; done only when all of them confirm."""
        if name in self.loaded:
            return name
        async with self._locks.setdefault(name, asyncio.Lock()):
            if name in self.loaded:
                return name
            path = await asyncio.to_thread(locate)
            await asyncio.gather(
                *(self._load(session, root, name, path, label) for root in self.roots)
            )
            self.loaded[name] = label
            self.last_used[name] = time.monotonic()
            return name

    @staticmethod
    async def _load(
        session: aiohttp.ClientSession, root: str, name: str, path: Path, label: str
    ) -> None:
        body = {"lora_name": name, "lora_path": str(path)}
        try:
            async with session.post(f"{root}/v1/load_lora_adapter", json=body) as reply:
                text = await reply.text()
                if reply.status >= 500 and "support" not in text.lower():
                    raise BackendUnavailable(f"loading {label} on {root} failed: {text[:300]}")
                already = reply.status == 400 and "already" in text.lower()
                if reply.status >= 400 and not already:
                    raise AdapterLoadFailed(f"the backend refused {label}: {text[:300]}")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise BackendUnavailable(f"backend replica at {root} unreachable: {error}") from error

    def forget(self, name: str) -> None:
        """A replica no longer has it (it restarted): load again on next use."""
        self.loaded.pop(name, None)

    def acquire(self, name: str) -> None:
        self.in_flight[name] += 1
        self.last_used[name] = time.monotonic()

    def release(self, name: str) -> None:
        self.in_flight[name] -= 1
        self.last_used[name] = time.monotonic()

    def idle(self, keep: set[str], idle_seconds: float) -> list[str]:
        now = time.monotonic()
        return [
            name
            for name in self.loaded
            if name not in keep
            and not name.startswith(IDENTITY_PREFIX)
            and self.in_flight[name] <= 0
            and now - self.last_used.get(name, 0) >= idle_seconds
        ]

    async def unload(self, session: aiohttp.ClientSession, name: str) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            if self.in_flight[name] > 0 or name not in self.loaded:
                return
            for root in self.roots:
                try:
                    async with session.post(
                        f"{root}/v1/unload_lora_adapter", json={"lora_name": name}
                    ) as reply:
                        await reply.read()
                except (aiohttp.ClientError, TimeoutError):
                    return  # try again on the next sweep
            self.loaded.pop(name, None)
