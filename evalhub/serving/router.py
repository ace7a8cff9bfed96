"""Route resolution: a requested model (a deployment or a model reference) to the exact version,
the deployment arm that chose it, and the backend that serves it.

The hot path avoids the database: deployments, backends and resolutions are cached for a fraction
of a second, and dropped at once when a change that routing depends on commits (`forget`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evalhub.platform import Platform
from evalhub.serving.backends import Backend, BackendService
from evalhub.serving.deployments import Arm, Deployment, DeploymentService
from evalhub.serving.gateway_errors import model_not_found, unavailable
from evalhub.serving.routing import pick_arm
from registry.entities import ModelKind, ModelVersion
from registry.errors import RegistryError

log = logging.getLogger(__name__)

CACHE_SECONDS = 0.5


@dataclass
class Route:
    backend: Backend
    version: ModelVersion
    deployment: Deployment | None = None
    arm: Arm | None = None


class TTLCache:
    """Fresh for `seconds`; after that the stale value is served while one refresh runs.

    Under load every in-flight request would otherwise miss at the same moment and each start
    its own database query.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._items: dict[Any, tuple[float, Any]] = {}
        self._loading: dict[Any, asyncio.Future[Any]] = {}
        self._generation = 0

    async def get(self, key: Any, load: Callable[[], Any]) -> Any:
        hit = self._items.get(key)
        if hit is not None:
            if time.monotonic() - hit[0] >= self.seconds and key not in self._loading:
                self._loading[key] = asyncio.ensure_future(self._load(key, load))
            return hit[1]
        pending = self._loading.get(key)
        if pending is None:
            pending = self._loading[key] = asyncio.ensure_future(self._load(key, load))
        return await asyncio.shield(pending)

    async def _load(self, key: Any, load: Callable[[], Any]) -> Any:
        generation = self._generation
        try:
            value = await asyncio.to_thread(load)
            if generation == self._generation:  # a load that began before a clear is stale
                self._items[key] = (time.monotonic(), value)
            return value
        finally:
            self._loading.pop(key, None)

    def clear(self) -> None:
        self._generation += 1
        self._items.clear()


class Router:
    def __init__(
        self, platform: Platform, backends: BackendService, deployments: DeploymentService
    ) -> None:
        self.platform = platform
        self.backends = backends
        self.deployments = deployments
        self._cache = TTLCache(CACHE_SECONDS)
        self._rng = random.Random()

    def forget(self) -> None:
        """Drops cached routing (deployments, resolutions, backends) after a change."""
        self._cache.clear()

    async def route(self, model: str, user: str | None, *, arm: str | None = None) -> Route:
        deployment = await self._cache.get(("deployment", model), lambda: self._deployment(model))
        if deployment is not None:
            return await self._route_deployment(deployment, user, arm)
        version = await self.version(model)
        if version is None:
            raise model_not_found(model)
        backend = await self._cache.get(("serves", version.ref), lambda: self._backend_for(version))
        if backend is None:
            base = version.ref if version.kind is ModelKind.BASE else version.base
            raise unavailable(
                f"no backend serves {base}, the base of {model}; add one with "
                f"'evalhub backend local --base {base}' or POST /api/v1/backends"
            )
        return Route(backend=backend, version=version)

    async def version(self, ref: str) -> ModelVersion | None:
        """What `ref` resolves to now; None when it resolves to nothing."""
        version: ModelVersion | None = await self._cache.get(
            ("ref", ref), lambda: self._resolve(ref)
        )
        return version

    async def backend(self, name: str) -> Backend | None:
        backend: Backend | None = await self._cache.get(
            ("backend", name), lambda: self._backend(name)
        )
        return backend

    async def _route_deployment(
        self, deployment: Deployment, user: str | None, arm_name: str | None
    ) -> Route:
        if arm_name is not None:
            arm = next(a for a in deployment.arms if a.name == arm_name)
        else:
            key = user if deployment.sticky != "none" else None
            arm = Arm(
                **pick_arm(
                    deployment.name, [a.model_dump() for a in deployment.arms], key, self._rng
                )
            )
        version = await self.version(arm.model)
        if version is None:
            control = deployment.control
            if deployment.failover and arm.name != control.name:
                log.warning(
                    "arm %s of %s resolves to nothing; failing over", arm.name, deployment.name
                )
                return await self._route_deployment(deployment, user, control.name)
            raise unavailable(
                f"arm {arm.name!r} of {deployment.name!r}: {arm.model} resolves to nothing"
            )
        backend = await self.backend(deployment.backend)
        if backend is None:
            raise unavailable(
                f"deployment {deployment.name!r}: backend {deployment.backend!r} is gone"
            )
        return Route(backend=backend, version=version, deployment=deployment, arm=arm)

    def _deployment(self, name: str) -> Deployment | None:
        try:
            return self.deployments.get(name)
        except RegistryError:
            return None

    def _resolve(self, model: str) -> ModelVersion | None:
        try:
            if model.startswith("ft:"):
                return self.platform.registry.resolve_fine_tuned(model)
            return self.platform.registry.resolve(model)
        except RegistryError:
            return None

    def _backend(self, name: str) -> Backend | None:
        try:
            return self.backends.get(name)
        except RegistryError:
            return None

    def _backend_for(self, version: ModelVersion) -> Backend | None:
        digest = version.digest if version.kind is ModelKind.BASE else version.base_digest
        return next((b for b in self.backends.list() if b.base_digest == digest), None)
