"""Serve-plan benchmark: a merged model against the same adapter hot-loaded, alone and mixed.

Per backend kind (local and vLLM CPU), through a real `evalhub serve` and its gateway: adapters A
and B (LoRA in the fine-tuning defaults' shape: rank 16 on every linear layer and lm_head) on the
tiny base, A merged into its base (`POST .../merge`, as `evalhub versions merge` does), and two
backends: one serving the base, where adapters are hot-loaded, and one serving the merged model.
Four deployments on the base backend, one per case:

  merged           A alone, `serve: merged` (the gateway sends it to the merged backend)
  adapter          A alone, `serve: adapter`
  adapter + B      A and B hot-loaded, 50/50, both on the base backend
  merged + B       A merged and B hot-loaded, 50/50: A's half on the merged backend, B's half on
                   the base backend

Both backends run through every case, so the idle one weighs on every case alike; a case's
throughput is its deployment's (its requests over the wall time), whichever backends answered,
and its CPU time is both backends' processes'. On vLLM two more cases ask the merged server
directly, without the gateway: by its own name, and by the identity adapter that the gateway
sends base-model requests to there (the CPU build's mixed-batch workaround), to show what that
costs.

Concurrent clients send a fixed number of greedy chat requests (four prompts) with user keys
chosen so that two arms alternate exactly. The base is the tiny Llama without its pretraining
(`--pretrain-steps 0`), so that every answer runs to max_tokens. Cases run in turn, in reverse
order every other round; the table shows each case's median over the rounds, so that load from
other processes falls on every case alike.

Run: .venv/bin/python bench/serveplan.py [--backends local,vllm] [--rounds 3] [--requests 24]
Prints a table and writes bench/results/serveplan.json (entries of backends not run are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
from rich import box
from rich.console import Console
from rich.table import Table

# Run as a script, this file's folder comes first on sys.path and bench/registry.py would hide the
# `registry` package that evalhub imports; drop that folder before importing evalhub.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
# Before torch is first imported (lazily, below): one thread, no hub. `evalhub serve` inherits them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from evalhub.child_server import ChildServer, child_server  # noqa: E402
from evalhub.client import Client  # noqa: E402
from evalhub.serving.adapters import IDENTITY_PREFIX  # noqa: E402
from evalhub.serving.routing import bucket  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "serveplan.json"
VLLM_PYTHON = Path(__file__).resolve().parent.parent / ".vllm-venv" / "bin" / "python"
PROMPTS = ["repeat: cat dog bird", "repeat: sun moon star", "repeat: red blue", "repeat: one two"]
RANK = 16
# As bench/hotswap.py: float32 (the CPU build's bfloat16 default differs from the local backend)
# and a short context; two adapter slots hold A and B.
VLLM_OPTIONS: dict[str, Any] = {
    "max_loras": 2,
    "max_lora_rank": RANK,
    "args": ["--dtype", "float32", "--max-model-len", "256"],
}
# vLLM CPU's default ("auto") pins each server's compute threads to the same first cores, so the
# merged backend and the base backend would share one core of two; "nobind" lets the OS place them.
VLLM_BIND = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind")
# case -> arms (name, model, serve, weight); every deployment is on the base backend.
CASES: dict[str, list[tuple[str, str, str, int]]] = {
    "merged": [("a", "bot/1", "merged", 100)],
    "adapter": [("a", "bot/1", "adapter", 100)],
    "adapter + B": [("a", "bot/1", "adapter", 50), ("b", "bot/2", "adapter", 50)],
    "merged + B": [("a", "bot/1", "merged", 50), ("b", "bot/2", "adapter", 50)],
}


def build_models(root: Path, pretrain_steps: int) -> tuple[Path, list[Path]]:
    """The tiny base and two LoRA adapters on it (random non-zero B, distinct seeds).

    Hidden size 128 (head dim 32): the smallest the vLLM CPU build's attention kernels take.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from evalhub.finetune.tiny import build_tiny_model

    base = build_tiny_model(root / "base", seed=0, hidden_size=128, pretrain_steps=pretrain_steps)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    paths = []
    for index in range(2):
        torch.manual_seed(index)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=[*targets, "lm_head"]),
        )
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.05)
        model.save_pretrained(str(root / f"adapter-{index}"), save_embedding_layers=False)
        paths.append(root / f"adapter-{index}")
    return base, paths


def alternating_users(deployment: str, count: int) -> list[str]:
    """User keys the gateway routes alternately to a 50/50 deployment's first and second arm."""
    sides: tuple[list[str], list[str]] = ([], [])
    index = 0
    while min(len(side) for side in sides) < count:
        key = f"user-{index}"
        sides[bucket(deployment, key) >= 50].append(key)
        index += 1
    return [sides[i % 2][i // 2] for i in range(count)]


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest rank."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def send(
    url: str, model: str, token: str, requests: int, concurrency: int, max_tokens: int
) -> dict[str, Any]:
    """`requests` chat requests from `concurrency` clients; latency, throughput and who answered.

    `url` is the gateway (`model` a deployment) or a backend asked directly (one arm, "a").
    """
    users = alternating_users(model, requests)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)
    latencies: list[float] = []
    tokens = errors = 0
    first_error: str | None = None
    arms: Counter[str] = Counter()
    served_as: Counter[str] = Counter()
    answers: dict[str, dict[str, str]] = {}  # arm -> prompt -> answer
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=300, limits=limits) as client:

        async def worker() -> None:
            nonlocal tokens, errors, first_error
            while not queue.empty():
                index = queue.get_nowait()
                prompt = PROMPTS[(index // 2) % len(PROMPTS)]
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "user": users[index],
                }
                started = time.perf_counter()
                reply = await client.post(f"{url}/v1/chat/completions", json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                if reply.status_code != 200:
                    errors += 1
                    first_error = first_error or f"{reply.status_code} {reply.text[:300]}"
                    continue
                arm = reply.headers.get("x-evalhub-arm", "a")
                arms[arm] += 1
                served_as[reply.headers.get("x-evalhub-served-as", "not merged")] += 1
                answer = reply.json()
                tokens += answer["usage"]["completion_tokens"]
                answers.setdefault(arm, {})[prompt] = answer["choices"][0]["message"]["content"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests_per_s": requests / elapsed,
        "tokens_per_s": tokens / elapsed,
        "p50_ms": statistics.median(ordered),
        "p95_ms": percentile(ordered, 0.95),
        "errors": errors,
        "first_error": first_error,
        "tokens_per_request": tokens / max(1, requests - errors),
        "arms": dict(arms),
        "served_as": dict(served_as),
        "answers": answers,
    }


def process_trees(pids: list[int]) -> list[psutil.Process]:
    """These processes and all their descendants (a vLLM server runs its engine in children)."""
    processes = [psutil.Process(pid) for pid in pids]
    return processes + [child for p in processes for child in p.children(recursive=True)]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User and system CPU time the processes have used so far."""
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def start_backends(
    api: Client, bodies: list[dict[str, Any]], server: ChildServer
) -> list[dict[str, Any]]:
    """Starts the backends side by side (a vLLM start is mostly waiting); all must be healthy."""
    started: list[dict[str, Any]] = [{} for _ in bodies]

    def start(index: int) -> None:
        started[index] = api.post("/backends", bodies[index])

    threads = [threading.Thread(target=start, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for backend in started:
        if backend.get("status") != "healthy":
            raise RuntimeError(f"backend {backend.get('name')} is not healthy:\n{server.tail()}")
    return started


def measure(
    kind: str, base: Path, adapters: list[Path], home: Path, args: argparse.Namespace
) -> dict[str, Any]:
    from evalhub.cli.registry import register_directory

    env = {"OMP_NUM_THREADS": "1"}
    if kind == "vllm":
        env["EVALHUB_VLLM_PYTHON"] = str(VLLM_PYTHON)
        env["VLLM_CPU_OMP_THREADS_BIND"] = VLLM_BIND
    with child_server(home, env) as server:
        assert server.token is not None
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=600) as http:
            api = Client(http)
            api.post("/models", {"name": "tiny", "kind": "base"})
            register_directory(api, base, "tiny")
            api.post("/models", {"name": "bot", "kind": "adapter"})
            for adapter in adapters:
                register_directory(api, adapter, "bot", base="tiny/1")
            merged = api.post("/models/bot/versions/1/merge")["merged"]["ref"]
            options = VLLM_OPTIONS if kind == "vllm" else {}
            begun = time.perf_counter()
            backends = start_backends(
                api,
                [
                    {"name": "base", "kind": kind, "base": "tiny/1", "options": options},
                    {"name": "merged", "kind": kind, "base": merged, "options": options},
                ],
                server,
            )
            backends_start_s = round(time.perf_counter() - begun, 1)
            for case, arms in CASES.items():
                body = [
                    {"name": name, "model": model, "serve": serve, "weight": weight}
                    for name, model, serve, weight in arms
                ]
                api.post("/deployments", {"name": slug(case), "backend": "base", "arms": body})

            targets = {case: (server.url, slug(case)) for case in CASES}
            processes = process_trees([pid for b in backends for pid in b["pids"]])

            def run(case: str, requests: int) -> dict[str, Any]:
                url, model = targets[case]
                token = server.token or ""
                used = cpu_seconds(processes)
                measured = asyncio.run(
                    send(url, model, token, requests, args.concurrency, args.max_tokens)
                )
                used = cpu_seconds(processes) - used
                return {**measured, "backend_cpu_ms_per_request": 1000 * used / requests}

            for case in CASES:  # loads the adapters and warms every path; not counted
                warm = run(case, args.concurrency)
                if warm["errors"]:
                    raise RuntimeError(f"{kind} {case}: warm-up failed:\n{server.tail()}")
            if kind == "vllm":
                targets.update(direct_targets(backends[1]))
            rounds: dict[str, list[dict[str, Any]]] = {case: [] for case in targets}
            for index in range(args.rounds):
                order = list(targets) if index % 2 == 0 else list(reversed(targets))
                for case in order:
                    rounds[case].append(run(case, args.requests))
            memory = {
                b["name"]: round(sum(p.memory_info().rss for p in process_trees(b["pids"])) / 2**20)
                for b in backends
            }
    return {
        "backends_start_s": backends_start_s,
        "backend_rss_mb": memory,
        "merged_version": merged,
        "options": options,
        "vllm_cpu_omp_threads_bind": VLLM_BIND if kind == "vllm" else None,
        "cases": {case: summarise(measured) for case, measured in rounds.items()},
        "a_answers_equal": same_answers(rounds),
    }


def direct_targets(merged_backend: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The merged vLLM server asked directly, by its base name and by the identity adapter that
    the gateway sends base requests to there (the CPU build's mixed-batch workaround)."""
    url = merged_backend["urls"][0].removesuffix("/v1")
    served = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    identity = next(m["id"] for m in served if m["id"].startswith(IDENTITY_PREFIX))
    return {
        "direct": (url, merged_backend["served_name"]),
        "direct, identity": (url, identity),
    }


def slug(case: str) -> str:
    return case.replace(" + ", "-plus-").lower()


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds, and every round's figures."""
    figures = ("requests_per_s", "tokens_per_s", "p50_ms", "p95_ms", "backend_cpu_ms_per_request")
    median = {key: round(statistics.median(r[key] for r in rounds), 2) for key in figures}
    return {
        **median,
        "errors": sum(r["errors"] for r in rounds),
        "first_error": next((r["first_error"] for r in rounds if r["first_error"]), None),
        "tokens_per_request": round(statistics.mean(r["tokens_per_request"] for r in rounds), 2),
        "arms": dict(sum((Counter(r["arms"]) for r in rounds), Counter())),
        "served_as": dict(sum((Counter(r["served_as"]) for r in rounds), Counter())),
        "rounds": [{key: round(r[key], 2) for key in figures} for r in rounds],
    }


def same_answers(rounds: dict[str, list[dict[str, Any]]]) -> bool:
    """Whether A merged gave A hot-loaded's greedy answers, prompt by prompt."""

    def of(case: str) -> dict[str, str]:
        answers: dict[str, str] = {}
        for measured in rounds[case]:
            answers.update(measured["answers"].get("a", {}))
        return answers

    reference = of("adapter")
    return all(of(case) == reference for case in rounds)


def device(kind: str) -> str:
    if kind == "vllm":  # the CPU build: its dist-info names the package and version
        found = sorted(VLLM_PYTHON.parent.parent.glob("lib/python*/site-packages/vllm*.dist-info"))
        return found[0].name.removesuffix(".dist-info") if found else "vllm"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def print_table(backends: dict[str, Any], args: argparse.Namespace) -> None:
    devices = ", ".join(f"{kind} on {measured['device']}" for kind, measured in backends.items())
    table = Table(
        title=(
            f"Serve plan: merged A against A hot-loaded\n({args.requests} chat requests a round, "
            f"{args.concurrency} clients, max_tokens {args.max_tokens}, median of {args.rounds} "
            f"rounds; {devices})"
        ),
        caption=(
            "merged: A merged, on its own backend; adapter: A hot-loaded on the base backend; "
            "+ B: 50/50 with adapter B hot-loaded on the base backend; direct: the merged vLLM "
            "server asked without the gateway, by its own name or by the identity adapter the "
            "gateway sends its requests to. vs: req/s against adapter, adapter + B, and "
            "direct, identity. CPU ms/req: CPU time of both backends' processes per request."
        ),
        box=box.SIMPLE_HEAD,
    )
    table.add_column("backend", no_wrap=True)
    table.add_column("case", no_wrap=True)
    for column in ("req/s", "p50 ms", "p95 ms", "vs", "CPU ms/req", "errors"):
        table.add_column(column, justify="right", no_wrap=True)
    against = {
        "merged": "adapter",
        "merged + B": "adapter + B",
        "direct": "direct, identity",
    }
    for kind, measured in backends.items():
        cases = measured["cases"]
        for case, row in cases.items():
            ratio = ""
            if case in against:
                ratio = f"{row['requests_per_s'] / cases[against[case]]['requests_per_s']:.2f}x"
            table.add_row(
                kind,
                case,
                f"{row['requests_per_s']:.1f}",
                f"{row['p50_ms']:.0f}",
                f"{row['p95_ms']:.0f}",
                ratio,
                f"{row['backend_cpu_ms_per_request']:.0f}",
                str(row["errors"]),
            )
    Console(width=max(100, Console().width)).print(table)
    for kind, measured in backends.items():
        print(
            f"{kind}: both backends started in {measured['backends_start_s']} s; RSS "
            + ", ".join(f"{name} {mb:.0f} MB" for name, mb in measured["backend_rss_mb"].items())
            + f"; A's answers equal in every case: {measured['a_answers_equal']}"
        )
        for case, row in measured["cases"].items():
            if row["first_error"]:
                print(f"{kind} {case}: {row['errors']} failed, the first: {row['first_error']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="local,vllm", help="comma-separated: local, vllm")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every case")
    parser.add_argument("--requests", type=int, default=24, help="requests per case and round")
    parser.add_argument("--concurrency", type=int, default=8, help="clients sending at once")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--pretrain-steps", type=int, default=0)
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
    with tempfile.TemporaryDirectory(prefix="evalhub-serveplan-") as scratch:
        base, adapters = build_models(Path(scratch), args.pretrain_steps)
        for kind in kinds:
            print(f"measuring {kind} ...", flush=True)
            started = time.perf_counter()
            measured[kind] = measure(kind, base, adapters, Path(scratch) / f"home-{kind}", args)
            measured[kind]["device"] = device(kind)
            measured[kind]["runtime_s"] = round(time.perf_counter() - started)
    runtime_s = time.perf_counter() - begun

    print_table(measured, args)
    print(f"total {runtime_s:.0f} s")
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    for kind, result in measured.items():
        existing.setdefault("backends", {})[kind] = {
            **result,
            "cpu_count": os.cpu_count(),
            "threads": int(os.environ["OMP_NUM_THREADS"]),
            "model": f"tiny Llama (hidden 128, 2 layers), LoRA r={RANK} all linear + lm_head",
            "requests": args.requests,
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
