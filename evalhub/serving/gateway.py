"""The OpenAI-compatible gateway: route each request to a deployment arm or a model reference
(`router`), forward it to the backend that serves it and relay the answer (`forwarding`), count it
and log it (`traffic`), and keep the backends' adapters to what the deployments point at
(`adapter_pool`).

Forwarding uses one shared aiohttp session; traffic records are written in batches by another
thread, from a journal written before the client has the answer.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import aiohttp
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram

from evalhub.events import Change
from evalhub.platform import Platform
from evalhub.serving.adapter_pool import AdapterPool
from evalhub.serving.adapters import AdapterLoadFailed, BackendUnavailable
from evalhub.serving.backends import BackendService
from evalhub.serving.deployments import DeploymentService
from evalhub.serving.forwarding import Forwarder, response_headers
from evalhub.serving.gateway_errors import (
    MAX_MODEL_CHARS,
    MAX_USER_CHARS,
    GatewayError,
    check_lengths,
    invalid_request,
    unavailable,
)
from evalhub.serving.on_demand import OnDemandBackends
from evalhub.serving.router import Route, Router
from evalhub.serving.traffic import TrafficLog
from evalhub.serving.traffic_record import RequestContext
from monitors.cost import price_for, token_cost
from registry.entities import ModelKind
from registry.errors import RegistryError
from registry.names import parse_ref

__all__ = ["MAX_MODEL_CHARS", "MAX_USER_CHARS", "Gateway", "GatewayError"]

log = logging.getLogger(__name__)

USER_HEADER = "x-evalhub-user"
KEEPALIVE_SECONDS = 4.0
#: Changes that can alter where a request goes.
_ROUTING_ACTIONS = ("alias.", "version.", "model.", "deployment.", "backend.")


class Gateway:
    def __init__(
        self,
        platform: Platform,
        backends: BackendService,
        *,
        metrics: CollectorRegistry,
        on_demand: OnDemandBackends | None = None,
    ) -> None:
        self.platform = platform
        self.backends = backends
        self.deployments = DeploymentService(platform)
        self.router = Router(platform, backends, self.deployments, on_demand)
        self.adapters = AdapterPool(platform)
        self.forwarder = Forwarder(self.adapters, lambda: self.session, self._record)
        self.traffic = TrafficLog(
            platform.engine, platform.settings.home / "traffic-journal", metrics=metrics
        )
        self.adapter_idle_seconds = platform.settings.adapter_idle_seconds
        self._session: aiohttp.ClientSession | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every committed change that routing depends on, made here or by another process.
        self._unsubscribe = platform.events.subscribe(self._on_change)
        self.requests = Counter(
            "evalhub_gateway_requests_total",
            "Gateway requests by deployment, arm and HTTP status.",
            ["deployment", "arm", "status"],
            registry=metrics,
        )
        self.errors = Counter(
            "evalhub_gateway_errors_total",
            "Gateway requests that failed (status >= 500 or backend unreachable).",
            ["deployment", "arm"],
            registry=metrics,
        )
        self.latency = Histogram(
            "evalhub_gateway_request_duration_seconds",
            "Gateway request latency, first byte to last, by deployment and arm.",
            ["deployment", "arm"],
            registry=metrics,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=self.platform.settings.gateway_timeout)
        # Idle connections are dropped before the backends drop them (uvicorn, and vLLM on it,
        # after 5 s): a POST sent on a connection the server has just closed fails as a 503.
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=KEEPALIVE_SECONDS)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        self._unsubscribe()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self.traffic.close)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Gateway.start() was not awaited"
        return self._session

    # -- changes -----------------------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        """Routes follow a committed change from the next request on, and what the deployments'
        arms now resolve to is loaded before traffic asks for it."""
        if not change.action.startswith(_ROUTING_ACTIONS):
            return
        self.router.forget()
        if change.action.startswith("deployment."):
            self.preload_soon()
        elif change.action.startswith("alias.") and change.after is not None:
            self.preload_soon(change.model)

    def preload_soon(self, model: str | None = None) -> None:
        """Starts `preload` on the server's event loop, from whatever thread made the change."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self.preload(model), loop)
            future.add_done_callback(_log_failure)

    async def preload(self, model: str | None = None) -> None:
        """Loads what the deployments' arms (those following `model`) resolve to now.

        After an alias moves, the new version is loaded into the backends before traffic asks for
        it, so no request waits for the load; the old one is unloaded once idle (`sweep`).
        """
        deployments = await asyncio.to_thread(self.deployments.list)
        for deployment in deployments:
            for arm in deployment.arms:
                if arm.weight <= 0:
                    continue
                if model is not None and _model_name(arm.model) not in (model, None):
                    continue
                try:
                    route = await self.router.route(deployment.name, None, arm=arm.name)
                    await self.adapters.served_name(self.session, route)
                except Exception as error:  # the request path reports it; this only warms up
                    log.warning("preloading %s arm %s: %s", deployment.name, arm.name, error)

    # -- requests ----------------------------------------------------------------------------

    async def handle(self, endpoint: str, body: dict[str, Any], headers: Any) -> Response:
        """`endpoint` is "chat/completions" or "completions"."""
        request_id = f"req-{uuid.uuid4().hex}"
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return invalid_request("you must provide a model", "missing_model", "model").response()
        user = headers.get(USER_HEADER) or body.get("user")
        refused = check_lengths(model, user)
        if refused is not None:
            return refused.response({"X-Evalhub-Request-Id": request_id})
        context = RequestContext(request_id, endpoint, body, model, user)
        try:
            route = await self.router.route(model, user)
        except GatewayError as error:
            self._record(context, error.status, error=error.message)
            return error.response({"X-Evalhub-Request-Id": request_id})
        try:
            return await self.forwarder.forward(context, route)
        except (BackendUnavailable, GatewayError) as error:
            fallback = await self._failover(route, model, user, error)
            if fallback is not None:
                log.warning("failing over %s to the control arm: %s", request_id, error)
                return await self.forwarder.forward(context, fallback)
            failure = error if isinstance(error, GatewayError) else unavailable(str(error))
            self._record(context, failure.status, error=failure.message)
            return failure.response(response_headers(request_id, route))

    async def _failover(
        self, route: Route, model: str, user: str | None, error: Exception
    ) -> Route | None:
        """The control arm's route, when the arm that failed may fail over to it.

        An arm that cannot answer (backend down, adapter refused) may; a bad request would fail on
        the control arm too, so it does not.
        """
        retryable = isinstance(error, BackendUnavailable) or (
            isinstance(error, GatewayError) and error.code == "adapter_not_loadable"
        )
        deployment, arm = route.deployment, route.arm
        if not (retryable and deployment and deployment.failover and arm):
            return None
        control = deployment.control
        if arm.name == control.name:
            return None
        return await self.router.route(model, user, arm=control.name)

    def _record(
        self,
        context: RequestContext,
        status: int,
        *,
        text: str | None = None,
        usage: dict[str, Any] | None = None,
        ttft_ms: float | None = None,
        error: str | None = None,
    ) -> None:
        """Counts the request and journals its record: done before the client has the answer."""
        labels = (context.deployment or "-", context.arm or "-")
        self.requests.labels(*labels, str(status)).inc()
        self.latency.labels(*labels).observe(context.seconds)
        if status >= 500:
            self.errors.labels(*labels).inc()
        record = context.record(status, text=text, usage=usage, ttft_ms=ttft_ms, error=error)
        if record.prompt_tokens is not None:
            price = price_for(
                self.platform.settings.prices, context.registered_model, record.version
            )
            if price is not None:
                cost = token_cost(price, record.prompt_tokens, record.completion_tokens or 0)
                record = record.model_copy(update={"cost": cost})
        self.traffic.record(record)

    # -- adapters ----------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        """Preloads what arms point at (so a moved alias is warm) and unloads what nothing uses."""
        while True:
            try:
                await asyncio.sleep(1.0)
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gateway sweep failed")

    async def sweep(self) -> None:
        """Keeps what arms with weight point at loaded; unloads the rest once idle."""
        deployments = await asyncio.to_thread(self.deployments.list)
        wanted: dict[str, set[str]] = {}
        for deployment in deployments:
            for arm in deployment.arms:
                if arm.weight <= 0:  # no traffic: not kept loaded (a rolled-back candidate)
                    continue
                try:
                    route = await self.router.route(deployment.name, None, arm=arm.name)
                except GatewayError:
                    continue  # the request path reports it
                if route.served.kind is not ModelKind.ADAPTER:
                    continue  # a base model, or an adapter served merged: nothing to load
                try:
                    name = await self.adapters.of(route.backend).ensure(self.session, route.served)
                except (AdapterLoadFailed, BackendUnavailable) as error:
                    log.warning(
                        "preloading %s on %s failed: %s",
                        route.served.ref,
                        route.backend.name,
                        error,
                    )
                    continue
                wanted.setdefault(route.backend.name, set()).add(name)
        await self.adapters.unload_idle(self.session, wanted, self.adapter_idle_seconds)

    def loaded_adapters(self, backend: str) -> dict[str, str]:
        return self.adapters.loaded(backend)


def _model_name(ref: str) -> str | None:
    """The registered model a reference names; None for what only resolves later (`ft:` ids)."""
    try:
        return parse_ref(ref).name
    except RegistryError:
        return None


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("preloading failed: %s", future.exception())
