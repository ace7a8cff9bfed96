"""Forwarding a routed request to its backend, and relaying a streamed answer back.

Each answer is recorded (through `Recorder`) before the client has all of it: a non-streamed one
before the response is returned, a streamed one before `[DONE]` is relayed.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import aiohttp
from fastapi.responses import Response, StreamingResponse

from evalhub.serving.adapter_pool import AdapterPool
from evalhub.serving.adapters import AdapterLoadFailed, BackendUnavailable
from evalhub.serving.backends import Backend
from evalhub.serving.gateway_errors import not_loadable
from evalhub.serving.router import Route
from evalhub.serving.traffic_record import RequestContext
from registry.entities import ModelKind


class Recorder(Protocol):
    def __call__(
        self,
        context: RequestContext,
        status: int,
        *,
        text: str | None = None,
        usage: dict[str, Any] | None = None,
        ttft_ms: float | None = None,
        error: str | None = None,
    ) -> None: ...


def response_headers(request_id: str, route: Route) -> dict[str, str]:
    headers = {
        "X-Evalhub-Request-Id": request_id,
        "X-Evalhub-Model-Version": route.version.ref,
        "X-Evalhub-Model-Digest": route.version.digest,
        "X-Evalhub-Backend": route.backend.name,
    }
    if route.merged is not None:
        headers["X-Evalhub-Served-As"] = route.merged.ref
    if route.deployment is not None and route.arm is not None:
        headers["X-Evalhub-Deployment"] = route.deployment.name
        headers["X-Evalhub-Arm"] = route.arm.name
    return headers


class Forwarder:
    def __init__(
        self,
        pool: AdapterPool,
        session: Callable[[], aiohttp.ClientSession],
        record: Recorder,
    ) -> None:
        self.pool = pool
        self.session = session
        self.record = record
        self._turns: dict[str, int] = {}

    async def forward(self, context: RequestContext, route: Route) -> Response:
        """Raises BackendUnavailable, or a GatewayError for an adapter the backend refused:
        both may be failed over to another arm."""
        context.routed_to(
            route.deployment.name if route.deployment else None,
            route.arm.name if route.arm else None,
            route.version,
        )
        adapters = self.pool.of(route.backend)
        try:
            served = await self.pool.served_name(self.session(), route)
        except AdapterLoadFailed as error:
            raise not_loadable(str(error)) from error
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
        if reply.status == 404 and route.served.kind is ModelKind.ADAPTER:
            # A replica lost the adapter (it restarted): load it everywhere again, once.
            reply.release()
            adapters.release(served)
            adapters.forget(served)
            served = await self.pool.served_name(self.session(), route)
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
        headers = response_headers(context.request_id, route)
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
            self.record(context, status, error=str(reason))
            return Response(raw, status_code=status, media_type="application/json", headers=headers)
        data["model"] = context.model
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        self.record(context, status, text=_text_of(data), usage=usage)
        return Response(
            json.dumps(data), status_code=status, media_type="application/json", headers=headers
        )

    def _replicas(self, backend: Backend) -> list[str]:
        """The backend's replica URLs, starting with the next one in round-robin order."""
        turn = self._turns[backend.name] = self._turns.get(backend.name, -1) + 1
        start = turn % len(backend.urls)
        return backend.urls[start:] + backend.urls[:start]

    async def _post(
        self, backend: str, replicas: list[str], endpoint: str, payload: dict[str, Any]
    ) -> aiohttp.ClientResponse:
        """Posts to the first replica that answers; a replica that is down is skipped."""
        failures = []
        for url in replicas:
            try:
                return await self.session().post(f"{url}/{endpoint}", json=payload)
            except (aiohttp.ClientError, TimeoutError) as error:
                failures.append(f"{url}: {error}")
        raise BackendUnavailable(
            f"backend {backend!r} is unavailable: no replica answered ({'; '.join(failures)})"
        )

    async def _relay(
        self, reply: aiohttp.ClientResponse, context: RequestContext, route: Route, served: str
    ) -> AsyncIterator[bytes]:
        """Relays the backend's events; the record is journaled before the client sees the end."""
        wants_usage = bool((context.body.get("stream_options") or {}).get("include_usage"))
        parts: list[str] = []
        usage: dict[str, Any] = {}
        first_token: float | None = None
        recorded = False

        def finish(status: int = 200, error: str | None = None) -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                ttft = (first_token - context.started) * 1000 if first_token is not None else None
                self.record(context, status, text="".join(parts), usage=usage, ttft_ms=ttft,
                            error=error)  # fmt: skip

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
                text = _text_of(chunk, "delta")
                if text:
                    if first_token is None:
                        first_token = time.perf_counter()
                    parts.append(text)
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        except (aiohttp.ClientError, TimeoutError) as failure:
            finish(503, f"backend stream broke: {failure}")
        finally:
            reply.release()
            self.pool.of(route.backend).release(served)
            finish()


def _text_of(data: dict[str, Any], part: str = "message") -> str:
    """The first choice's text: its `message` (an answer) or `delta` (a stream chunk), or the
    `text` of a completion."""
    choices = data.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    content = choice.get(part)
    if isinstance(content, dict):
        return content.get("content") or ""
    return choice.get("text") or ""
