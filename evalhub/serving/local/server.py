"""The local backend's HTTP face: the OpenAI API plus vLLM's adapter admin API over a LocalEngine.

Run: python -m evalhub.serving.local.server --model DIR --served-model-name NAME --port 8001 \
        [--adapter name=path ...] [--allowed-adapter-root DIR]

Decoding runs in a worker thread per request that feeds an asyncio queue, so the event loop stays
free and a slow streaming client never holds the engine's lock: tokens are produced at full speed and
buffered, and a client that disconnects stops its generation at the next token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from evalhub.sampling import SamplingParams
from evalhub.serving.local.errors import ServingError, bad_request, model_not_found
from evalhub.serving.local.generation import GenerationChunk, GenerationRequest
from evalhub.serving.local.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatResponseMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    LoadLoRAAdapterRequest,
    ModelCard,
    ModelList,
    SamplingFields,
    UnloadLoRAAdapterRequest,
    Usage,
    new_id,
    now,
)
from evalhub.serving.openai_errors import OpenAIErrorDetail, openai_error_response

if TYPE_CHECKING:
    from evalhub.serving.local.engine import LocalEngine

_END = object()


def error_response(error: ServingError) -> JSONResponse:
    """vLLM's flavour of OpenAI's shape (its `type` names, the status as `code`)."""
    return openai_error_response(
        error.status_code,
        error.message,
        type=error.error_type,
        code=error.status_code,
        param=error.param,
    )


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def create_local_app(engine: LocalEngine, served_model_name: str) -> FastAPI:
    """The FastAPI app serving `engine`; the base answers to `served_model_name`."""
    app = FastAPI(title="evalhub local backend", version="1")
    app.state.engine = engine
    app.state.served_model_name = served_model_name

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, error: ServingError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'][1:]) or 'body'}: {item['msg']}"
            for item in error.errors()
        )
        return error_response(bad_request(f"Invalid request: {problems}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(ServingError(error.status_code, str(error.detail)))

    @app.get("/health")
    def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    def list_models() -> ModelList:
        cards = [
            ModelCard(
                id=served_model_name,
                root=str(engine.base_dir),
                max_model_len=engine.max_model_len,
            )
        ]
        cards += [
            ModelCard(
                id=adapter.name,
                created=int(adapter.loaded_at),
                root=str(adapter.path),
                parent=served_model_name,
            )
            for adapter in engine.adapters()
        ]
        return ModelList(data=cards)

    @app.post("/v1/load_lora_adapter")
    def load_lora_adapter(body: LoadLoRAAdapterRequest) -> PlainTextResponse:
        if body.lora_name == served_model_name:
            raise bad_request(
                f"'{body.lora_name}' is the base model's name; pick another adapter name",
                "lora_name",
            )
        engine.load_adapter(body.lora_name, body.lora_path, load_inplace=body.load_inplace)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    def unload_lora_adapter(body: UnloadLoRAAdapterRequest) -> PlainTextResponse:
        engine.unload_adapter(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    def adapter_for(model: str) -> str | None:
        if model == served_model_name:
            return None
        if not engine.has_adapter(model):
            raise model_not_found(model)
        return model

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        request = GenerationRequest(
            adapter=adapter_for(body.model),
            messages=[
                {"role": message.role, "content": message.text()} for message in body.messages
            ],
            sampling=sampling_params(body, body.token_limit()),
        )
        chunks = generate_async(engine, request)
        first = await anext(chunks)  # errors (unknown adapter, prompt too long) surface here
        if not body.stream:
            text, last = await join(first, chunks)
            return JSONResponse(
                ChatCompletionResponse(
                    model=body.model,
                    choices=[
                        ChatChoice(
                            message=ChatResponseMessage(content=text),
                            finish_reason=last.finish_reason or "length",
                        )
                    ],
                    usage=Usage.of(last.prompt_tokens, last.completion_tokens),
                ).model_dump()
            )
        response_id, created = new_id("chatcmpl"), now()

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
            return sse(
                ChatCompletionChunk(
                    id=response_id, created=created, model=body.model, choices=choices, usage=usage
                ).model_dump()
            )

        return stream_events(
            first,
            chunks,
            opening=chunk([ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))]),
            render=lambda item: chunk(
                [
                    ChatChunkChoice(
                        delta=ChatDelta(content=item.text), finish_reason=item.finish_reason
                    )
                ]
            ),
            render_usage=lambda usage: chunk([], usage),
            include_usage=body.include_usage(),
        )

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Response:
        if body.echo:
            raise bad_request("echo is not supported by the local backend", "echo")
        if body.best_of not in (None, 1):
            raise bad_request("best_of is not supported by the local backend", "best_of")
        request = GenerationRequest(
            adapter=adapter_for(body.model),
            prompt=body.prompt,
            sampling=sampling_params(body, body.max_tokens),
        )
        chunks = generate_async(engine, request)
        first = await anext(chunks)
        if not body.stream:
            text, last = await join(first, chunks)
            return JSONResponse(
                CompletionResponse(
                    model=body.model,
                    choices=[CompletionChoice(text=text, finish_reason=last.finish_reason)],
                    usage=Usage.of(last.prompt_tokens, last.completion_tokens),
                ).model_dump()
            )
        response_id, created = new_id("cmpl"), now()

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
            return sse(
                CompletionResponse(
                    id=response_id, created=created, model=body.model, choices=choices, usage=usage
                ).model_dump()
            )

        return stream_events(
            first,
            chunks,
            opening=None,
            render=lambda item: chunk(
                [CompletionChoice(text=item.text, finish_reason=item.finish_reason)]
            ),
            render_usage=lambda usage: chunk([], usage),
            include_usage=body.include_usage(),
        )

    return app


def sampling_params(body: SamplingFields, max_tokens: int | None) -> SamplingParams:
    """Refuses what the local backend cannot honour instead of silently ignoring it."""
    if body.n != 1:
        raise bad_request("n must be 1 on the local backend; send several requests instead", "n")
    if getattr(body, "logprobs", None):
        raise bad_request("logprobs are not supported by the local backend", "logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise bad_request(f"{name} is not supported by the local backend", name)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop_strings(),
    )


async def generate_async(
    engine: LocalEngine, request: GenerationRequest
) -> AsyncGenerator[GenerationChunk, None]:
    """The engine's chunks, produced in a worker thread and handed over through a queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancelled = threading.Event()

    def put(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            with contextlib.closing(engine.stream(request)) as chunks:
                for chunk in chunks:
                    if cancelled.is_set():
                        return
                    put(chunk)
        except ServingError as error:
            put(error)
        except Exception as error:
            put(ServingError(500, f"Generation failed: {type(error).__name__}: {error}"))
        finally:
            put(_END)

    threading.Thread(target=work, name="evalhub-local-generate", daemon=True).start()
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        cancelled.set()


async def join(
    first: GenerationChunk, rest: AsyncGenerator[GenerationChunk, None]
) -> tuple[str, GenerationChunk]:
    parts, last = [first.text], first
    async for chunk in rest:
        parts.append(chunk.text)
        last = chunk
    return "".join(parts), last


def stream_events(
    first: GenerationChunk,
    rest: AsyncGenerator[GenerationChunk, None],
    *,
    opening: str | None,
    render: Callable[[GenerationChunk], str],
    render_usage: Callable[[Usage], str],
    include_usage: bool,
) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        if opening is not None:
            yield opening
        last = first
        try:
            yield render(first)
            async for chunk in rest:
                last = chunk
                yield render(chunk)
            if include_usage:
                yield render_usage(Usage.of(last.prompt_tokens, last.completion_tokens))
            yield sse("[DONE]")
        except ServingError as error:
            # Headers are sent already: report the failure in the stream, as vLLM does.
            body = OpenAIErrorDetail(
                message=error.message,
                type=error.error_type,
                param=error.param,
                code=error.status_code,
            )
            yield sse({"error": body.model_dump()})
            yield sse("[DONE]")
        finally:
            await rest.aclose()

    return StreamingResponse(events(), media_type="text/event-stream")


def parse_adapter(text: str) -> tuple[str, str]:
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parent = os.getppid()  # before loading the model, which a killed server may not outlast
    parser = argparse.ArgumentParser(
        prog="python -m evalhub.serving.local.server",
        description="Serve a base model and its LoRA adapters with the OpenAI and vLLM admin APIs.",
    )
    parser.add_argument("--model", required=True, type=Path, help="base model directory")
    parser.add_argument("--served-model-name", help="name of the base model (default: dir name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        type=parse_adapter,
        metavar="NAME=PATH",
        help="adapter to load at start (repeatable)",
    )
    parser.add_argument(
        "--allowed-adapter-root", type=Path, help="only load adapters from inside this directory"
    )
    parser.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    parser.add_argument("--max-model-len", type=int, help="context limit (default: model config)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    from evalhub.serving.local.engine import LocalEngine

    engine = LocalEngine(
        args.model,
        device=args.device,
        allowed_root=args.allowed_adapter_root,
        max_model_len=args.max_model_len,
    )
    for name, path in args.adapter:
        engine.load_adapter(name, path)
    app = create_local_app(engine, args.served_model_name or Path(args.model).resolve().name)
    threading.Thread(target=_stop_with_parent, args=(parent,), daemon=True).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def _stop_with_parent(parent: int, every: float = 1.0) -> None:
    """A managed backend runs in a session of its own, out of reach of its server's signals, and
    the server stops it on the way out; a server that is killed never gets there. Its backend
    then stops itself, as on SIGTERM, instead of holding its port and memory with no one to
    send it traffic."""
    while os.getppid() == parent:
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
