"""The OpenAI-compatible gateway: route each request to a deployment arm or a model reference,
forward it to the backend that serves it, stream it back, and log it.

The hot path avoids the database: deployments, backends and reference resolutions are cached for
a fraction of a second (so an alias move reaches traffic within that time), forwarding uses one
shared aiohttp session, and traffic records are written in batches by another thread.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram

from evalhub.events import Change
from evalhub.platform import Platform
from evalhub.serving.adapters import (
    IDENTITY_PREFIX,
    AdapterLoadFailed,
    AdapterSet,
    BackendUnavailable,
)
from evalhub.serving.backends import Backend, BackendService
from evalhub.serving.deployments import Arm, Deployment, DeploymentService
from evalhub.serving.identity import identity_adapter
from evalhub.serving.openai_errors import openai_error_response
from evalhub.serving.routing import pick_arm
from evalhub.serving.traffic import TrafficLog
from evalhub.serving.traffic_record import RequestContext
from monitors.cost import price_for, token_cost
from registry.entities import ModelKind, ModelVersion
from registry.errors import RegistryError
from registry.names import parse_ref

log = logging.getLogger(__name__)

CACHE_SECONDS = 0.5
USER_HEADER = "x-evalhub-user"
# OpenAI's limits for a model id and an end-user id; longer ones are refused, not clipped.
MAX_MODEL_CHARS = 256
MAX_USER_CHARS = 256
#: Changes that can alter where a request goes.
_ROUTING_ACTIONS = ("alias.", "version.", "model.", "deployment.", "backend.")


class GatewayError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return openai_error_response(
            self.status,
            self.message,
            type=self.type,
            code=self.code,
            param=self.param,
            headers=headers,
        )


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


def unavailable(message: str) -> GatewayError:
    return GatewayError(503, message, "service_unavailable", "backend_unavailable")


def invalid_request(message: str, code: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param)


def _check_lengths(model: str, user: Any) -> GatewayError | None:
    """OpenAI refuses over-long ids with a 400 naming the parameter; so does the gateway."""
    if len(model) > MAX_MODEL_CHARS:
        return invalid_request(
            f"model is {len(model)} characters long; the most is {MAX_MODEL_CHARS}",
            "string_above_max_length",
            "model",
        )
    if user is not None and not isinstance(user, str):
        return invalid_request("user must be a string", "invalid_type", "user")
    if user is not None and len(user) > MAX_USER_CHARS:
        return invalid_request(
            f"user is {len(user)} characters long; the most is {MAX_USER_CHARS}",
            "string_above_max_length",
            "user",
        )
    return None


def _at(context: RequestContext, route: Route) -> None:
    """The request's context learns where it was routed (again, after a failover)."""
    context.deployment = route.deployment.name if route.deployment else None
    context.arm = route.arm.name if route.arm else None
    context.version = route.version.ref
    context.digest = route.version.digest


@dataclass
class Route:
    backend: Backend
    version: ModelVersion
    deployment: Deployment | None = None
    arm: Arm | None = None


class _TTLCache:
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


class Gateway:
    def __init__(
        self,
        platform: Platform,
        backends: BackendService,
        *,
        metrics: CollectorRegistry,
        adapter_idle_seconds: float = 60.0,
    ) -> None:
        self.platform = platform
        self.backends = backends
        self.deployments = DeploymentService(platform)
        self.traffic = TrafficLog(
            platform.engine, platform.settings.home / "traffic-journal", metrics=metrics
        )
        self.adapter_idle_seconds = adapter_idle_seconds
        self._session: aiohttp.ClientSession | None = None
        self._adapters: dict[str, AdapterSet] = {}
        self._turns: dict[str, int] = {}
        self._cache = _TTLCache(CACHE_SECONDS)
        self._rng = random.Random()
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
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30)
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

    # -- routing -----------------------------------------------------------------------------

    async def route(self, model: str, user: str | None, *, arm: str | None = None) -> Route:
        deployment = await self._cache.get(("deployment", model), lambda: self._deployment(model))
        if deployment is not None:
            return await self._route_deployment(deployment, user, arm)
        version = await self._cache.get(("ref", model), lambda: self._resolve(model))
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
        version = await self._cache.get(("ref", arm.model), lambda: self._resolve(arm.model))
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
        backend = await self._cache.get(
            ("backend", deployment.backend), lambda: self._backend(deployment.backend)
        )
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

    def _adapter_set(self, backend: Backend) -> AdapterSet:
        adapters = self._adapters.get(backend.name)
        if adapters is None or adapters.urls != backend.urls:
            adapters = AdapterSet(backend.urls, self.platform.registry.artifacts.materialize)
            self._adapters[backend.name] = adapters
        return adapters

    def _replicas(self, backend: Backend) -> list[str]:
        """The backend's replica URLs, starting with the next one in round-robin order."""
        turn = self._turns[backend.name] = self._turns.get(backend.name, -1) + 1
        start = turn % len(backend.urls)
        return backend.urls[start:] + backend.urls[:start]

    async def served_name(self, route: Route) -> str:
        adapters = self._adapter_set(route.backend)
        if route.version.kind is ModelKind.ADAPTER:
            return await adapters.ensure(self.session, route.version)
        if route.backend.kind != "vllm":
            return route.backend.served_name
        # vLLM's CPU build gives base requests in mixed batches another adapter's output; an
        # identity adapter keeps them correct (see evalhub.serving.identity).
        digest = route.version.digest.removeprefix("sha256:")[:12]
        return await adapters.ensure_named(
            self.session,
            f"{IDENTITY_PREFIX}{digest}",
            lambda: self._identity_dir(route.version),
            f"{route.version.ref} (identity adapter)",
        )

    def _identity_dir(self, version: ModelVersion) -> Path:
        base_dir = self.platform.registry.artifacts.materialize(version.digest)
        out = self.platform.settings.home / "identity" / version.digest.removeprefix("sha256:")
        return identity_adapter(base_dir, out, version.ref)

    def _on_change(self, change: Change) -> None:
        """Routes follow a committed change from the next request on, and what the deployments'
        arms now resolve to is loaded before traffic asks for it."""
        if not change.action.startswith(_ROUTING_ACTIONS):
            return
        self.forget_routes()
        if change.action.startswith("deployment."):
            self.preload_soon()
        elif change.action.startswith("alias.") and change.after is not None:
            self.preload_soon(change.model)

    def forget_routes(self) -> None:
        """Drops cached routing (deployments, resolutions, backends) after a change here."""
        self._cache.clear()

    def preload_soon(self, model: str | None = None) -> None:
        """Starts `preload` on the server's event loop, from whatever thread made the change."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self.preload(model), loop)
            future.add_done_callback(_log_failure)

    async def preload(self, model: str | None = None) -> None:
        """Loads what the deployments' arms (those following `model`) resolve to now.

        After an alias moves, the new version is loaded into the backends before traffic asks for
        it, so no request waits for the load; the old one is unloaded once idle (`_sweep`).
        """
        deployments = await asyncio.to_thread(self.deployments.list)
        for deployment in deployments:
            for arm in deployment.arms:
                if model is not None and _model_name(arm.model) not in (model, None):
                    continue
                try:
                    await self.served_name(await self.route(deployment.name, None, arm=arm.name))
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
        refused = _check_lengths(model, user)
        if refused is not None:
            return refused.response({"X-Evalhub-Request-Id": request_id})
        context = RequestContext(request_id, endpoint, body, model, user)
        try:
            route = await self.route(model, user)
        except GatewayError as error:
            self._log(context, error.status, error=error.message)
            return error.response({"X-Evalhub-Request-Id": request_id})
        try:
            return await self._forward(context, route)
        except (BackendUnavailable, GatewayError) as error:
            # An arm that cannot answer (backend down, adapter refused) may fail over; a bad
            # request would fail on the control arm too, so it does not.
            retryable = isinstance(error, BackendUnavailable) or (
                isinstance(error, GatewayError) and error.code == "adapter_not_loadable"
            )
            deployment = route.deployment
            control = deployment.control if deployment else None
            arm = route.arm
            if (
                retryable
                and deployment
                and deployment.failover
                and control
                and arm
                and arm.name != control.name
            ):
                log.warning("failing over %s from arm %s: %s", request_id, arm.name, error)
                fallback = await self.route(model, user, arm=control.name)
                return await self._forward(context, fallback)
            failure = error if isinstance(error, GatewayError) else unavailable(str(error))
            self._log(context, failure.status, error=failure.message)
            return failure.response(self._headers(request_id, route))

    async def _forward(self, context: RequestContext, route: Route) -> Response:
        _at(context, route)
        adapters = self._adapter_set(route.backend)
        try:
            served = await self.served_name(route)
        except AdapterLoadFailed as error:
            raise GatewayError(
                400, str(error), "invalid_request_error", "adapter_not_loadable"
            ) from error
        body = context.body
        stream = bool(body.get("stream"))
        payload = {**body, "model": served}
        if stream:
            payload["stream_options"] = {
                **(body.get("stream_options") or {}),
                "include_usage": True,
            }
        replicas = self._replicas(route.backend)
        endpoint = context.endpoint
        adapters.acquire(served)
        try:
            reply = await self._post(route.backend.name, replicas, endpoint, payload)
        except BackendUnavailable:
            adapters.release(served)
            raise
        if reply.status == 404 and route.version.kind is ModelKind.ADAPTER:
            # A replica lost the adapter (it restarted): load it everywhere again, once.
            reply.release()
            adapters.release(served)
            adapters.forget(served)
            served = await self.served_name(route)
            payload["model"] = served
            adapters.acquire(served)
            try:
                reply = await self._post(route.backend.name, replicas, endpoint, payload)
            except BackendUnavailable:
                adapters.release(served)
                raise
        if reply.status >= 500:
            text = await reply.text()
            reply.release()
            adapters.release(served)
            raise BackendUnavailable(
                f"backend {route.backend.name!r} failed ({reply.status}): {text[:300]}"
            )
        headers = self._headers(context.request_id, route)
        if stream and reply.status == 200:
            return StreamingResponse(
                self._relay(reply, context, route, served),
                media_type="text/event-stream",
                headers=headers,
            )
        try:
            raw = await reply.read()
        finally:
            reply.release()
            adapters.release(served)
        status = reply.status
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if status >= 400 or not isinstance(data, dict):
            message = (
                (data or {}).get("error", {}).get("message") if isinstance(data, dict) else None
            )
            reason = message or raw[:300].decode(errors="replace")
            self._log(context, status, error=str(reason))
            return Response(raw, status_code=status, media_type="application/json", headers=headers)
        data["model"] = context.model
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        self._log(context, status, text=_text_of(data), usage=usage, route=route)
        return Response(
            json.dumps(data), status_code=status, media_type="application/json", headers=headers
        )

    async def _post(
        self, backend: str, replicas: list[str], endpoint: str, payload: dict[str, Any]
    ) -> aiohttp.ClientResponse:
        """Posts to the first replica that answers; a replica that is down is skipped."""
        failures = []
        for url in replicas:
            try:
                return await self.session.post(f"{url}/{endpoint}", json=payload)
            except (aiohttp.ClientError, TimeoutError) as error:
                failures.append(f"{url}: {error}")
        raise BackendUnavailable(
            f"backend {backend!r} is unavailable: no replica answered ({'; '.join(failures)})"
        )

    async def _relay(
        self, reply: aiohttp.ClientResponse, context: RequestContext, route: Route, served: str
    ) -> AsyncIterator[bytes]:
        """Relays the backend's events; the record is journaled before the client sees the end."""
        body = context.body
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        parts: list[str] = []
        usage: dict[str, Any] = {}
        first_token: float | None = None
        logged = False

        def finish(status: int = 200, error: str | None = None) -> None:
            nonlocal logged
            if not logged:
                logged = True
                ttft = (first_token - context.started) * 1000 if first_token is not None else None
                self._log(context, status, text="".join(parts), usage=usage, ttft_ms=ttft,
                          error=error, route=route)  # fmt: skip

        try:
            async for line in reply.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    finish()
                    yield b"data: [DONE]\n\n"
                    continue
                chunk = json.loads(data)
                chunk["model"] = context.model
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    if not wants_usage and not chunk.get("choices"):
                        continue
                    if not wants_usage:
                        chunk.pop("usage")
                text = _delta_text(chunk)
                if text:
                    if first_token is None:
                        first_token = time.perf_counter()
                    parts.append(text)
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        except (aiohttp.ClientError, TimeoutError) as failure:
            finish(503, f"backend stream broke: {failure}")
        finally:
            reply.release()
            self._adapter_set(route.backend).release(served)
            finish()

    # -- bookkeeping -------------------------------------------------------------------------

    @staticmethod
    def _headers(request_id: str, route: Route) -> dict[str, str]:
        headers = {
            "X-Evalhub-Request-Id": request_id,
            "X-Evalhub-Model-Version": route.version.ref,
            "X-Evalhub-Model-Digest": route.version.digest,
        }
        if route.deployment is not None and route.arm is not None:
            headers["X-Evalhub-Deployment"] = route.deployment.name
            headers["X-Evalhub-Arm"] = route.arm.name
        return headers

    def _log(
        self,
        context: RequestContext,
        status: int,
        *,
        route: Route | None = None,
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
        if route is not None and record.prompt_tokens is not None:
            price = price_for(self.platform.settings.prices, route.version.model, route.version.ref)
            if price is not None:
                cost = token_cost(price, record.prompt_tokens, record.completion_tokens or 0)
                record = record.model_copy(update={"cost": cost})
        self.traffic.record(record)

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
        deployments = await asyncio.to_thread(self.deployments.list)
        wanted: dict[str, set[str]] = {}
        for deployment in deployments:
            backend = await self._cache.get(
                ("backend", deployment.backend),
                functools.partial(self._backend, deployment.backend),
            )
            if backend is None:
                continue
            for arm in deployment.arms:
                version = await self._cache.get(
                    ("ref", arm.model), functools.partial(self._resolve, arm.model)
                )
                if version is None or version.kind is not ModelKind.ADAPTER:
                    continue
                try:
                    name = await self._adapter_set(backend).ensure(self.session, version)
                except (AdapterLoadFailed, BackendUnavailable) as error:
                    log.warning("preloading %s on %s failed: %s", version.ref, backend.name, error)
                    continue
                wanted.setdefault(backend.name, set()).add(name)
        for backend_name, adapters in list(self._adapters.items()):
            for name in adapters.idle(wanted.get(backend_name, set()), self.adapter_idle_seconds):
                await adapters.unload(self.session, name)

    def loaded_adapters(self, backend: str) -> dict[str, str]:
        adapters = self._adapters.get(backend)
        return dict(adapters.loaded) if adapters else {}


def _text_of(data: dict[str, Any]) -> str:
    choices = data.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):
        return message.get("content") or ""
    return choice.get("text") or ""


def _delta_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or ""
    return choice.get("text") or ""


def _model_name(ref: str) -> str | None:
    """The registered model a reference names; None for what only resolves later (`ft:` ids)."""
    try:
        return parse_ref(ref).name
    except RegistryError:
        return None


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("preloading failed: %s", future.exception())
