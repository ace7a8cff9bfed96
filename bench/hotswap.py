"""Hot-swap benchmark: time from moving an alias to the first response from the new version.

Through the platform, per backend (local and vLLM CPU): a real `evalhub serve` supervises the
backend, a deployment's one arm follows bot@live, the alias is moved with the REST API, and the
gateway is polled until a response's x-evalhub-model-version names the new version. "cold" moves to
a version the backend never loaded (the load happens on the way), "warm" switches between two it
has, and "steady" is an ordinary request with no move, for scale.

Local backend only, straight to its server with no gateway (what a swap costs the engine): a new
adapter name loaded next to the old one, an in-place reload of the same name, and a new name while
two clients keep the base model busy (loads wait for the request decoding at that moment).

Run: .venv/bin/python bench/hotswap.py [--backends local,vllm] [--trials 20] [--cold-trials 10]
Prints a table and writes bench/results/hotswap.json (entries of backends not run are kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
from rich import box
from rich.console import Console
from rich.table import Table

from evalhub.serving.local.server import create_local_app

if TYPE_CHECKING:
    from evalhub.client import Client

# Run as a script, this file's folder comes first on sys.path and bench/registry.py would hide the
# `registry` package that the engine and the CLI import (lazily, below); drop that folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
# Before torch is first imported (lazily, below): one thread, no hub. `evalhub serve` inherits them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# peft warns on every unload of the active adapter, which the direct scenarios do each trial.
warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")

RESULTS = Path(__file__).parent / "results" / "hotswap.json"
VLLM_PYTHON = Path(__file__).resolve().parent.parent / ".vllm-venv" / "bin" / "python"
BASE_NAME = "tiny"
DEPLOYMENT = "hot"
CHAT = {"messages": [{"role": "user", "content": "repeat: cat dog bird"}], "max_tokens": 8}
# As tests/serving/test_vllm.py: float32 (the CPU build's bfloat16 default differs from the local
# backend), a short context, and two adapter slots, enough for the warm pair.
VLLM_OPTIONS: dict[str, Any] = {
    "max_loras": 2,
    "max_lora_rank": 8,
    "args": ["--dtype", "float32", "--max-model-len", "256"],
}


def build_models(root: Path, adapters: int, pretrain_steps: int) -> tuple[Path, list[Path]]:
    """The tiny base and `adapters` LoRA adapters on it (random non-zero B, distinct seeds).

    Hidden size 128 (head dim 32): the smallest the vLLM CPU build's attention kernels take.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from evalhub.finetune.tiny import build_tiny_model

    base = build_tiny_model(root / "base", seed=0, hidden_size=128, pretrain_steps=pretrain_steps)
    paths = []
    for index in range(adapters):
        torch.manual_seed(index)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        )
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.1)
        model.save_pretrained(root / f"adapter-{index}")
        paths.append(root / f"adapter-{index}")
    return base, paths


def summary(values: list[float]) -> dict[str, float]:
    """p50, p95 (nearest rank: the max below 20 samples) and max, in ms."""
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p95": round(ordered[math.ceil(0.95 * len(ordered)) - 1], 2),
        "max": round(ordered[-1], 2),
    }


class Timings:
    """Per trial: the call (alias PUT or adapter load), the wait after it, and both together."""

    def __init__(self) -> None:
        self.call: list[float] = []
        self.after: list[float] = []

    def add(self, started: float, called: float, answered: float) -> None:
        self.call.append((called - started) * 1000)
        self.after.append((answered - called) * 1000)

    def result(self, **extra: Any) -> dict[str, Any]:
        total = [c + a for c, a in zip(self.call, self.after, strict=True)]
        return {
            "call_ms": summary(self.call),
            "after_call_ms": summary(self.after),
            "total_ms": summary(total),
            "trials": len(self.after),
            "after_call_ms_each": [round(value, 1) for value in self.after],
            **extra,
        }


# -- through the platform ----------------------------------------------------------------------


@dataclass
class Served:
    http: httpx.Client  # the gateway, with the admin token
    api: Client  # the REST API on the same connection
    log: deque[str]  # the server's last lines, for errors


@contextmanager
def evalhub_serve(home: Path, env: dict[str, str]) -> Iterator[Served]:
    """`evalhub serve` on a free port and a fresh home, as the tests run it."""
    from evalhub.child_server import child_server
    from evalhub.client import Client

    with child_server(home, env) as server:
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=600) as http:
            yield Served(http=http, api=Client(http), log=server.output)


def first_response_from(http: httpx.Client, ref: str, timeout: float = 300) -> tuple[int, int]:
    """Asks the deployment until `ref` answers; returns (answers by another version, failures).

    Both should be 0: the gateway drops its cached routes when the alias moves, and a load in
    progress makes the request wait rather than fail.
    """
    stale = failed = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = http.post("/v1/chat/completions", json={"model": DEPLOYMENT, **CHAT})
        if response.status_code != 200:
            failed += 1
            time.sleep(0.05)
        elif response.headers.get("x-evalhub-model-version") == ref:
            return stale, failed
        else:
            stale += 1
    raise RuntimeError(f"{ref} did not answer within {timeout:.0f} s")


def move_alias(served: Served, version: int, timings: Timings) -> dict[str, int]:
    started = time.perf_counter()
    served.api.put("/models/bot/aliases/live", {"version": version})
    called = time.perf_counter()
    stale, failed = first_response_from(served.http, f"bot/{version}")
    timings.add(started, called, time.perf_counter())
    return {"stale_responses": stale, "failed_requests": failed}


def measure_platform(
    kind: str, base: Path, adapters: list[Path], trials: int, home: Path
) -> dict[str, Any]:
    """Cold moves to each version after the first, then warm moves between the last two.

    Warm runs after cold so that its pair are the most recently used: on vLLM they then hold the
    two adapter slots, and nothing has been idle long enough (60 s) for the gateway to unload it.
    """
    from evalhub.cli.registry import register_directory

    env = {"OMP_NUM_THREADS": "1"}
    if kind == "vllm":
        env["EVALHUB_VLLM_PYTHON"] = str(VLLM_PYTHON)
    with evalhub_serve(home, env) as served:
        api = served.api
        api.post("/models", {"name": "tiny", "kind": "base"})
        register_directory(api, base, "tiny")
        api.post("/models", {"name": "bot", "kind": "adapter"})
        for adapter in adapters:
            register_directory(api, adapter, "bot", base="tiny/1")
        started = time.perf_counter()
        body: dict[str, Any] = {"name": kind, "kind": kind, "base": "tiny/1"}
        if kind == "vllm":
            # Room in vLLM's CPU cache for every version, so that none is evicted and reloaded.
            body["options"] = {**VLLM_OPTIONS, "max_cpu_loras": max(8, len(adapters) + 1)}
        backend = api.post("/backends", body)
        backend_start_s = round(time.perf_counter() - started, 1)
        if backend["status"] != "healthy":
            raise RuntimeError(f"backend {kind} is {backend['status']}:\n" + "".join(served.log))
        api.put("/models/bot/aliases/live", {"version": 1})
        arms = [{"name": "main", "model": "bot@live", "weight": 100}]
        api.post("/deployments", {"name": DEPLOYMENT, "backend": kind, "arms": arms})
        first_response_from(served.http, "bot/1")  # the first load, not counted

        scenarios: dict[str, Any] = {}
        cold, counts = Timings(), []
        for version in range(2, len(adapters) + 1):
            counts.append(move_alias(served, version, cold))
        scenarios["cold move"] = cold.result(**totals(counts))
        warm, counts = Timings(), []
        pair = (len(adapters) - 1, len(adapters))
        for trial in range(trials):
            counts.append(move_alias(served, pair[trial % 2], warm))
        scenarios["warm move"] = warm.result(**totals(counts))
        steady = Timings()
        for _ in range(trials):
            started = time.perf_counter()
            served.http.post(
                "/v1/chat/completions", json={"model": DEPLOYMENT, **CHAT}
            ).raise_for_status()
            steady.add(started, started, time.perf_counter())
        scenarios["steady"] = steady.result()
    options = body.get("options", {})
    return {"backend_start_s": backend_start_s, "options": options, "scenarios": scenarios}


def totals(counts: list[dict[str, int]]) -> dict[str, int]:
    return {key: sum(c[key] for c in counts) for key in ("stale_responses", "failed_requests")}


# -- the local engine directly -----------------------------------------------------------------


@contextmanager
def local_server(base: Path) -> Iterator[str]:
    from evalhub.serving.local.engine import LocalEngine

    engine = LocalEngine(base)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(create_local_app(engine, BASE_NAME), log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def background_traffic(url: str, clients: int) -> Iterator[dict[str, Any]]:
    """Clients sending base-model requests back to back; yields their running tally.

    Failures are counted, not raised: "no request fails during a swap" is one of the results.
    """
    stop = threading.Event()
    tally: dict[str, Any] = {"completed": 0, "failed": 0, "first_failure": None}
    lock = threading.Lock()

    def send() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                body = {"model": BASE_NAME, **CHAT, "max_tokens": 32}
                response = client.post("/v1/chat/completions", json=body)
                with lock:
                    if response.status_code == 200:
                        tally["completed"] += 1
                    else:
                        tally["failed"] += 1
                        tally["first_failure"] = tally["first_failure"] or response.text

    threads = [threading.Thread(target=send, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield tally
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def run_direct(url: str, adapters: list[Path], trials: int, scenario: str) -> dict[str, Any]:
    """Load call, then one request by the loaded name; unloads the previous name as the gateway
    would once nothing uses it."""
    timings = Timings()
    inplace = scenario == "in place"
    with httpx.Client(base_url=url, timeout=60) as client:
        previous: str | None = None
        for trial in range(trials):
            name = "bot" if inplace else f"bot-{scenario[:3]}-{trial}"
            body = {
                "lora_name": name,
                "lora_path": str(adapters[trial % len(adapters)]),
                "load_inplace": inplace,
            }
            started = time.perf_counter()
            client.post("/v1/load_lora_adapter", json=body).raise_for_status()
            called = time.perf_counter()
            client.post("/v1/chat/completions", json={"model": name, **CHAT}).raise_for_status()
            timings.add(started, called, time.perf_counter())
            if previous is not None and previous != name:
                client.post("/v1/unload_lora_adapter", json={"lora_name": previous})
            previous = name
        client.post("/v1/unload_lora_adapter", json={"lora_name": previous})
    return timings.result()


def measure_direct(base: Path, adapters: list[Path], trials: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with local_server(base) as url:
        results["direct: new name"] = run_direct(url, adapters, trials, "new name")
        results["direct: in place"] = run_direct(url, adapters, trials, "in place")
        with background_traffic(url, clients=2) as tally:
            busy = run_direct(url, adapters, trials, "busy")
        results["direct: busy base"] = {**busy, "background_requests": dict(tally)}
    return results


def device(kind: str) -> str:
    if kind == "vllm":  # the CPU build: its dist-info names the package and version
        found = sorted(VLLM_PYTHON.parent.parent.glob("lib/python*/site-packages/vllm*.dist-info"))
        return found[0].name.removesuffix(".dist-info") if found else "vllm"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- report ------------------------------------------------------------------------------------


def print_table(backends: dict[str, Any]) -> None:
    devices = ", ".join(f"{kind} on {measured['device']}" for kind, measured in backends.items())
    table = Table(
        title=f"Hot swap: ms to the first answer from the new version\n({devices})",
        caption=(
            "cold/warm move: alias PUT to a version the backend never loaded / already has; "
            "steady: a request with no move; direct: load_lora_adapter on the local server, no "
            "gateway. after: from the call (PUT or load) returning; total: including the call; "
            "stale: answers by the old version after the PUT."
        ),
        box=box.SIMPLE_HEAD,
    )
    table.add_column("backend", no_wrap=True)
    table.add_column("scenario", no_wrap=True)
    for column in ("n", "after\np50", "\np95", "\nmax", "total\np50", "\np95"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("stale", justify="right", no_wrap=True, min_width=5)
    for backend, measured in backends.items():
        for scenario, row in measured["scenarios"].items():
            after, total = row["after_call_ms"], row["total_ms"]
            table.add_row(
                backend,
                scenario,
                str(row["trials"]),
                *(f"{after[k]:.0f}" for k in ("p50", "p95", "max")),
                *(f"{total[k]:.0f}" for k in ("p50", "p95")),
                str(row.get("stale_responses", "")),
            )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="local,vllm", help="comma-separated: local, vllm")
    parser.add_argument("--trials", type=int, default=20, help="warm, steady and direct trials")
    parser.add_argument("--cold-trials", type=int, default=10, help="versions never loaded before")
    parser.add_argument("--base", type=Path, help="base model directory (default: build the tiny)")
    parser.add_argument("--adapters", type=Path, nargs="*", help="adapter directories on --base")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    kinds = [kind.strip() for kind in args.backends.split(",") if kind.strip()]
    if unknown := set(kinds) - {"local", "vllm"}:
        parser.error(f"unknown backends {sorted(unknown)}: choose from local, vllm")
    if "vllm" in kinds and not VLLM_PYTHON.is_file():
        print(f"skipping vllm: no virtualenv at {VLLM_PYTHON} (`make vllm` creates it)")
        kinds.remove("vllm")
    if not kinds:
        return

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    begun = time.perf_counter()
    measured: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="evalhub-hotswap-") as scratch:
        if args.base is not None:
            base, adapters = args.base, list(args.adapters or [])
            if len(adapters) < 2:
                parser.error("--base needs --adapters, two or more")
            adapters = adapters[: args.cold_trials + 1]
        else:
            base, adapters = build_models(Path(scratch), args.cold_trials + 1, args.pretrain_steps)
        for kind in kinds:
            print(f"measuring {kind} ...", flush=True)
            home = Path(scratch) / f"home-{kind}"
            measured[kind] = measure_platform(kind, base, adapters, args.trials, home)
            measured[kind]["device"] = device(kind)
            if kind == "local":
                measured[kind]["scenarios"].update(measure_direct(base, adapters, args.trials))
    runtime_s = time.perf_counter() - begun

    print_table(measured)
    print(f"total {runtime_s:.0f} s")
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    model = str(args.base) if args.base else "tiny Llama (hidden 128, 2 layers), LoRA r=8 qkvo"
    for kind, result in measured.items():
        existing.setdefault("backends", {})[kind] = {
            **result,
            "cpu_count": os.cpu_count(),
            "threads": int(os.environ["OMP_NUM_THREADS"]),
            "model": model,
            "request": CHAT,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
