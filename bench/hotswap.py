"""Hot-swap benchmark: time from an adapter load call to the first response from the new adapter.

Local backend (transformers + peft) over HTTP, as the gateway sees it, in three scenarios:
a new adapter name loaded next to the old one (how an alias move swaps versions, since names carry
the version digest), an in-place reload of the same name, and a new name while two clients keep the
base model busy (loads wait for the request decoding at that moment).

Run: .venv/bin/python bench/hotswap.py [--trials 10] [--base DIR --adapters DIR ...]
Prints a table and writes bench/results/hotswap.json (entries of other backends are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.table import Table

from evalhub.serving.local_server import create_local_app

# Run as a script, this file's folder comes first on sys.path and bench/registry.py would hide the
# `registry` package that the engine imports (lazily, below); drop that folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
# Before torch is first imported (lazily, below): one thread, no hub.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).parent / "results" / "hotswap.json"
BASE_NAME = "tiny"
CHAT = {"messages": [{"role": "user", "content": "repeat: cat dog bird"}], "max_tokens": 8}


def build_models(root: Path, adapters: int, pretrain_steps: int) -> tuple[Path, list[Path]]:
    """The tiny base and `adapters` LoRA adapters on it (random non-zero B, distinct seeds)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from evalhub.finetune.tiny import build_tiny_model

    base = build_tiny_model(root / "base", seed=0, hidden_size=64, pretrain_steps=pretrain_steps)
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


@contextmanager
def local_server(base: Path) -> Iterator[str]:
    from evalhub.serving.local import LocalEngine

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


def swap(client: httpx.Client, name: str, path: Path, inplace: bool) -> tuple[float, float]:
    """(load call ms, load call to first response ms) for one swap."""
    started = time.perf_counter()
    body = {"lora_name": name, "lora_path": str(path), "load_inplace": inplace}
    client.post("/v1/load_lora_adapter", json=body).raise_for_status()
    loaded = time.perf_counter()
    client.post("/v1/chat/completions", json={"model": name, **CHAT}).raise_for_status()
    answered = time.perf_counter()
    return (loaded - started) * 1000, (answered - started) * 1000


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


def run_scenario(url: str, adapters: list[Path], trials: int, scenario: str) -> dict[str, Any]:
    loads, firsts = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        previous: str | None = None
        for trial in range(trials):
            path = adapters[trial % len(adapters)]
            name = "bot" if scenario == "in place" else f"bot-{scenario[:3]}-{trial}"
            load_ms, first_ms = swap(client, name, path, inplace=scenario == "in place")
            loads.append(load_ms)
            firsts.append(first_ms)
            if previous is not None and previous != name:
                client.post("/v1/unload_lora_adapter", json={"lora_name": previous})
            previous = name
        client.post("/v1/unload_lora_adapter", json={"lora_name": previous})
    return {"load_ms": summary(loads), "first_response_ms": summary(firsts), "trials": trials}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2),
        "max": round(ordered[-1], 2),
    }


def measure_local(base: Path, adapters: list[Path], trials: int) -> dict[str, Any]:
    import torch

    results: dict[str, Any] = {}
    with local_server(base) as url:
        results["new name"] = run_scenario(url, adapters, trials, "new name")
        results["in place"] = run_scenario(url, adapters, trials, "in place")
        with background_traffic(url, clients=2) as tally:
            busy = run_scenario(url, adapters, trials, "busy")
        results["new name, base busy"] = {**busy, "background_requests": dict(tally)}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"device": device, "torch_threads": torch.get_num_threads(), "scenarios": results}


def print_table(backend: str, measured: dict[str, Any]) -> None:
    table = Table(title=f"Hot swap: {backend} backend on {measured['device']}")
    for column in ("scenario", "load p50 ms", "load p90 ms", "first resp. p50 ms", "p90 ms", "max"):
        if column == "scenario":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right")
    for scenario, row in measured["scenarios"].items():
        load, first = row["load_ms"], row["first_response_ms"]
        table.add_row(
            scenario,
            f"{load['p50']:.1f}",
            f"{load['p90']:.1f}",
            f"{first['p50']:.1f}",
            f"{first['p90']:.1f}",
            f"{first['max']:.1f}",
        )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--base", type=Path, help="base model directory (default: build the tiny)")
    parser.add_argument("--adapters", type=Path, nargs="*", help="adapter directories on --base")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with tempfile.TemporaryDirectory(prefix="evalhub-hotswap-") as scratch:
        if args.base is not None:
            base, adapters = args.base, list(args.adapters or [])
            if not adapters:
                parser.error("--base needs --adapters")
        else:
            base, adapters = build_models(Path(scratch), 3, args.pretrain_steps)
        measured = measure_local(base, adapters, args.trials)

    print_table("local", measured)
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing.setdefault("backends", {})["local"] = {
        **measured,
        "model": str(args.base) if args.base else "tiny Llama (hidden 64, 2 layers), LoRA r=8 qkvo",
        "request": CHAT,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
