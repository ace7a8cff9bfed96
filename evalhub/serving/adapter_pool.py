"""The adapters of every backend: the name a route is served under, loaded on first use, and
unloaded once idle and no arm points at it."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from evalhub.platform import Platform
from evalhub.serving.adapters import IDENTITY_PREFIX, AdapterSet
from evalhub.serving.backends import Backend
from evalhub.serving.identity import identity_adapter
from evalhub.serving.router import Route
from registry.entities import ModelKind, ModelVersion


class AdapterPool:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._sets: dict[str, AdapterSet] = {}

    def of(self, backend: Backend) -> AdapterSet:
        """The backend's adapter set; a fresh one when its replicas changed."""
        adapters = self._sets.get(backend.name)
        if adapters is None or adapters.urls != backend.urls:
            adapters = AdapterSet(backend.urls, self.platform.registry.artifacts.materialize)
            self._sets[backend.name] = adapters
        return adapters

    async def served_name(self, session: aiohttp.ClientSession, route: Route) -> str:
        """The name the backend serves the route's version under, loading it if needed."""
        adapters = self.of(route.backend)
        version = route.served  # a merged model is served as the base it is
        if version.kind is ModelKind.ADAPTER:
            return await adapters.ensure(session, version)
        if route.backend.kind != "vllm":
            return route.backend.served_name
        # vLLM's CPU build gives base requests in mixed batches another adapter's output; an
        # identity adapter keeps them correct (see evalhub.serving.identity).
        digest = version.digest.removeprefix("sha256:")[:12]
        return await adapters.ensure_named(
            session,
            f"{IDENTITY_PREFIX}{digest}",
            lambda: self._identity_dir(version),
            f"{version.ref} (identity adapter)",
        )

    def _identity_dir(self, version: ModelVersion) -> Path:
        base_dir = self.platform.registry.artifacts.materialize(version.digest)
        out = self.platform.settings.home / "identity" / version.digest.removeprefix("sha256:")
        return identity_adapter(base_dir, out, version.ref)

    async def unload_idle(
        self, session: aiohttp.ClientSession, wanted: dict[str, set[str]], idle_seconds: float
    ) -> None:
        """Unloads, backend by backend, what is not `wanted` and has been idle that long."""
        for backend, adapters in list(self._sets.items()):
            for name in adapters.idle(wanted.get(backend, set()), idle_seconds):
                await adapters.unload(session, name)

    def loaded(self, backend: str) -> dict[str, str]:
        adapters = self._sets.get(backend)
        return dict(adapters.loaded) if adapters else {}
