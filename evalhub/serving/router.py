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
from evalhub.serving.gateway_errors import GatewayError, model_not_found, not_loadable, unavailable
from evalhub.serving.merge import find_merged
from evalhub.serving.on_demand import NoBackend, OnDemandBackends
from evalhub.serving.routing import pick_arm
from evalhub.serving.serve_plan import PlanRefused, ServeMode, adapter_config_of, decide
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
    # The base version the backend runs in place of `version`: its adapter merged into its base.
    merged: ModelVersion | None = None

    @property
    def served(self) -> ModelVersion:
        """What the backend is asked for: the merged model, or the version itself."""
        return self.merged or self.version


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
        self,
        platform: Platform,
        backends: BackendService,
        deployments: DeploymentService,
        on_demand: OnDemandBackends | None = None,
    ) -> None:
        self.platform = platform
        self.backends = backends
        self.deployments = deployments
        # Starts a backend for a base none serves (EVALHUB_AUTO_BACKEND); None keeps the 503.
        self.on_demand = on_demand
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
        direct: Route | GatewayError = await self._cache.get(
            ("serves", version.ref), lambda: self._direct(model, version)
        )
        if isinstance(direct, NoBackend) and self.on_demand is not None:
            await self.on_demand.ensure(direct)
            direct = await asyncio.to_thread(self._direct, model, version)
        if isinstance(direct, GatewayError):
            raise direct
        return direct

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
        backend_name = arm.backend or deployment.backend
        backend = await self.backend(backend_name)
        if backend is None:
            raise unavailable(f"deployment {deployment.name!r}: backend {backend_name!r} is gone")
        route = Route(backend=backend, version=version, deployment=deployment, arm=arm)
        planned: Route | GatewayError = await self._cache.get(
            ("plan", deployment.name, arm.name, version.digest, backend.name, arm.serve),
            lambda: self._planned(route, arm.serve),
        )
        if isinstance(planned, GatewayError):
            raise planned
        return planned

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

    def _planned(self, route: Route, mode: ServeMode) -> Route | GatewayError:
        """The route as the serve plan has it: the adapter on the arm's backend, or its merged
        model on a backend that serves that model."""
        version, backend = route.version, route.backend
        if version.kind is not ModelKind.ADAPTER:
            return route
        where = (
            f"arm {route.arm.name!r} of {route.deployment.name!r}: "
            if route.arm and route.deployment
            else ""
        )
        try:
            plan = decide(adapter_config_of(version), backend.kind, mode)
        except PlanRefused as refusal:
            return not_loadable(
                f"{where}backend {backend.name!r} ({backend.kind}) cannot load {version.ref}: "
                f"{refusal}; serve it merged (serve: merged or auto) or on a local backend"
            )
        if plan.plan == "adapter":
            return route
        merged = find_merged(self.platform, version)
        if merged is None:
            return unavailable(
                f"{where}{version.ref} is served merged into its base ({plan.reason}) and has no "
                f"merged version yet: run 'evalhub versions merge {version.ref}', then start a "
                f"backend for the merged model it prints ('evalhub backend {backend.kind} --base "
                "MERGED_REF')"
            )
        serving = self._backend_serving(merged.digest, prefer=backend.kind)
        if serving is None:
            return unavailable(
                f"{where}{version.ref} is served merged into its base ({plan.reason}) as "
                f"{merged.ref}, which no backend serves: start one with 'evalhub backend "
                f"{backend.kind} --base {merged.ref}'"
            )
        return Route(
            backend=serving,
            version=version,
            deployment=route.deployment,
            arm=route.arm,
            merged=merged,
        )

    def _direct(self, model: str, version: ModelVersion) -> Route | GatewayError:
        """A model reference asked for directly: a backend that loads it, else its merged model."""
        if version.kind is ModelKind.BASE:
            on_base = self._backends_on(version.digest)
            if not on_base:
                return NoBackend(
                    f"no backend serves {version.ref}; add one with "
                    f"'evalhub backend local --base {version.ref}' or POST /api/v1/backends",
                    version.ref,
                    version.digest,
                )
            return Route(backend=on_base[0], version=version)
        on_base = self._backends_on(version.base_digest)
        if not on_base or version.base is None or version.base_digest is None:
            return NoBackend(
                f"no backend serves {version.base}, the base of {model}; add one with "
                f"'evalhub backend local --base {version.base}' or POST /api/v1/backends",
                str(version.base),
                str(version.base_digest),
            )
        planned = [self._planned(Route(backend=b, version=version), "auto") for b in on_base]
        routes = [p for p in planned if isinstance(p, Route)]
        routes.sort(key=lambda route: route.merged is not None)  # one that loads it comes first
        return routes[0] if routes else planned[0]

    def _backends_on(self, digest: str | None) -> list[Backend]:
        return [b for b in self.backends.list() if b.base_digest == digest]

    def _backend_serving(self, digest: str, *, prefer: str) -> Backend | None:
        serving = self._backends_on(digest)
        same_kind = [b for b in serving if b.kind == prefer]
        choices = same_kind or serving
        return choices[0] if choices else None
