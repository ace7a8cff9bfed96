"""Gateway benchmark: added latency (p50, p99) and throughput against calling the backend directly.

An instant OpenAI-compatible upstream (aiohttp, canned answer) runs in its own process; `evalhub
serve` runs in another with that upstream attached as a backend. A load generator sends the same
chat request to both, at concurrency 1 and 32. Prints a table, writes bench/results/gateway.json.

Run: .venv/bin/python bench/gateway.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
from rich.console import Console
from rich.table import Table

SERVED = "bench/1"

UPSTREAM = """
import json, sys
from aiohttp import web
ANSWER = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})
MODELS = json.dumps({"object": "list", "data": [{"id": sys.argv[2], "object": "model"}]})
async def chat(request):
    await request.read()
    return web.Response(text=ANSWER, content_type="application/json")
async def models(request):
    return web.Response(text=MODELS, content_type="application/json")
async def health(request):
    return web.Response(text="")
app = web.Application()
app.add_routes([web.post("/v1/chat/completions", chat), web.get("/v1/models", models),
                web.get("/health", health)])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def make_model_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    )
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    header += b" " * (-len(header) % 8)
    (directory / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + b"\0" * 16
    )
    return directory


async def load(url: str, token: str, requests: int, concurrency: int) -> dict[str, float]:
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                async with session.post(url, json=body, headers=headers) as reply:
                    await reply.read()
                    errors += reply.status != 200
                latencies.append((time.perf_counter() - started) * 1000)

        for _ in range(50):  # warm up connections and caches
            async with session.post(url, json=body, headers=headers) as reply:
                await reply.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "requests_per_s": requests / elapsed,
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=Path("bench/results/gateway.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    upstream_port, gateway_port = free_port(), free_port()
    token = "ehk_bench_token_0123456789abcdef"
    env = {
        **os.environ,
        "EVALHUB_HOME": str(work / "home"),
        "EVALHUB_ADMIN_TOKEN": token,
        "EVALHUB_RUN_WORKER": "false",
    }
    env.pop("EVALHUB_DATABASE_URL", None)
    processes = [
        subprocess.Popen([sys.executable, "-c", UPSTREAM, str(upstream_port), SERVED]),
        subprocess.Popen(
            [sys.executable, "-m", "evalhub", "serve", "--port", str(gateway_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        upstream = f"http://127.0.0.1:{upstream_port}"
        gateway = f"http://127.0.0.1:{gateway_port}"
        wait_for(f"{upstream}/health")
        wait_for(f"{gateway}/healthz")
        api = httpx.Client(
            base_url=f"{gateway}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        api.post("/models", json={"name": "bench", "kind": "base"}).raise_for_status()
        with tempfile.TemporaryDirectory() as tmp:
            model = make_model_dir(Path(tmp) / "model")
            archive = Path(tmp) / "model.tar"
            subprocess.run(
                ["tar", "cf", str(archive), "-C", str(model.parent), "model"], check=True
            )
            with archive.open("rb") as handle:
                api.post("/models/bench/versions", files={"file": handle}).raise_for_status()
        backend = {"name": "instant", "kind": "local", "base": "bench/1", "managed": False}
        api.post("/backends", json={**backend, "url": upstream}).raise_for_status()
        api.post(
            "/deployments",
            json={
                "name": "bench",
                "backend": "instant",
                "arms": [{"name": "only", "model": "bench/1", "weight": 100}],
            },
        ).raise_for_status()

        rows = []
        for concurrency in (1, 32):
            direct = asyncio.run(
                load(f"{upstream}/v1/chat/completions", token, args.requests, concurrency)
            )
            through = asyncio.run(
                load(f"{gateway}/v1/chat/completions", token, args.requests, concurrency)
            )
            rows.append(
                {
                    "concurrency": concurrency,
                    "direct_p50_ms": round(direct["p50_ms"], 3),
                    "gateway_p50_ms": round(through["p50_ms"], 3),
                    "added_p50_ms": round(through["p50_ms"] - direct["p50_ms"], 3),
                    "added_p99_ms": round(through["p99_ms"] - direct["p99_ms"], 3),
                    "direct_rps": round(direct["requests_per_s"], 1),
                    "gateway_rps": round(through["requests_per_s"], 1),
                    "gateway_errors": through["errors"],
                }
            )
        logged = api.get("/traffic", params={"deployment": "bench", "limit": 1}).json()["data"]
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)

    table = Table(title=f"gateway vs direct, {args.requests} chat requests, instant upstream")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)
    print(f"traffic log has records: {bool(logged)}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"benchmark": "gateway", "results": rows}, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
