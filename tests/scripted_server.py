"""A scripted OpenAI-compatible server: a real HTTP server (FastAPI under uvicorn, in a thread, on
a free 127.0.0.1 port) whose answers follow a script, so clients are exercised end to end.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ScriptedServer:
    """An OpenAI-compatible chat server answering with `script(request body) -> text`."""

    script: Callable[[dict[str, Any]], str]
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_after: int | None = None  # answer HTTP 500 once this many calls have succeeded
    fail_first: int = 0  # answer HTTP 500 to the first calls (to exercise retries)
    delay_s: float = 0.0
    base_url: str = ""
    served_models: list[str] = field(default_factory=list)  # listed at /v1/models

    @property
    def calls(self) -> int:
        return len(self.requests)

    def app(self) -> FastAPI:
        app = FastAPI()
        served = {"ok": 0}

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            data = [{"id": name, "object": "model"} for name in self.served_models]
            return {"object": "list", "data": data}

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            self.requests.append(body)
            failing_early = len(self.requests) <= self.fail_first
            if failing_early or (self.fail_after is not None and served["ok"] >= self.fail_after):
                return JSONResponse({"error": {"message": "scripted outage"}}, status_code=500)
            served["ok"] += 1
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            text = self.script(body)
            prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(text.split()),
                "total_tokens": prompt_tokens + len(text.split()),
            }
            if body.get("stream"):
                return StreamingResponse(
                    _stream(body["model"], text, usage), media_type="text/event-stream"
                )
            return {
                "id": "chatcmpl-scripted",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }

        return app


def _stream(model: str, text: str, usage: dict[str, int]) -> Iterator[str]:
    base = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
    }
    for word in text.split(" "):
        chunk = {
            **base,
            "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}],
        }
        yield f"data: {json.dumps(chunk)}\n\n"
    final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield f"data: {json.dumps(final)}\n\n"
    yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


@contextmanager
def scripted(server: ScriptedServer) -> Iterator[ScriptedServer]:
    """`server` on a free 127.0.0.1 port (its `base_url` set) until the block ends."""
    port = _free_port()
    config = uvicorn.Config(server.app(), host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started:
        if time.monotonic() > deadline:
            raise RuntimeError("scripted server did not start")
        time.sleep(0.01)
    server.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield server
    finally:
        instance.should_exit = True
        thread.join(timeout=5)


@pytest.fixture
def start_scripted_server() -> Iterator[Callable[[ScriptedServer], ScriptedServer]]:
    """Start scripted servers on free ports; all are stopped at the end of the test."""
    with ExitStack() as stack:
        yield lambda server: stack.enter_context(scripted(server))
