"""Serving on the GPU with evalhub's local backend (LocalEngine, bf16 on CUDA; the H200 image has
no vLLM): one base with several LoRA adapters against a single merged model, and greedy correctness.

  python bench/gpu/serving.py [--deadline T]     # writes $OUT/serving.json

1. N random LoRA adapters (evalhub's LoRA config: r16, every linear layer and lm_head; random A and
   B so each one changes the answers) on the random base, and adapter 0 merged into a full model.
2. Throughput, greedy, one request at a time as the engine serves them: one engine holding all N
   adapters answers a shuffled stream mixing the base and every adapter; the same engine answers
   the stream all on adapter 0 (no switching); the merged model answers the stream as one model.
3. Correctness: every request of the mixed stream is sent alone to a fresh engine holding only its
   adapter (none for the base); the greedy answers must be identical. The merged model's answers to
   adapter 0's requests are compared too, for information (merged bf16 weights round differently).
Exits 1 when a step fails or an answer differs.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import gpubench
from gpubench import Deadline, Profile, log

RESULTS_FILE = "serving.json"
LORA_RANK = 16
STEP_SECONDS_GUESS = {"cuda": 20.0, "cpu": 5.0}  # optional steps need this much time left
T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    index: int
    adapter: str | None  # None: the base model
    messages: list[dict[str, str]]


def adapter_name(index: int) -> str:
    return f"bench-adapter-{index}"


def make_requests(chosen: Profile) -> list[Request]:
    """Held-out chat prompts spread evenly over the base and the adapters, in a seeded order."""
    from evalhub.finetune.tasks import upper_case_task

    arms: list[str | None] = [None, *(adapter_name(i) for i in range(chosen.adapters))]
    examples = upper_case_task(chosen.serve_requests, seed=1, split="held_out")
    order = [arms[index % len(arms)] for index in range(chosen.serve_requests)]
    random.Random(0).shuffle(order)
    return [
        Request(index, adapter, [example["messages"][0]])
        for index, (adapter, example) in enumerate(zip(order, examples, strict=True))
    ]


def make_adapters(chosen: Profile, base_dir: Path, root: Path) -> tuple[dict[str, Path], Path]:
    """Random adapters saved as PEFT directories, and adapter 0 merged into a bf16 model directory."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evalhub.finetune.methods.lora import LoraOptions, peft_lora_config

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = model.to(chosen.device)
    adapters: dict[str, Path] = {}
    merged = root / "merged-0"
    for index in range(chosen.adapters):
        torch.manual_seed(1000 + index)
        config = peft_lora_config(model, LoraOptions(rank=LORA_RANK))
        config.init_lora_weights = False  # random B too: an untrained LoRA changes nothing
        peft_model = get_peft_model(model, config)
        directory = root / adapter_name(index)
        peft_model.save_pretrained(str(directory), save_embedding_layers=False)
        adapters[adapter_name(index)] = directory
        if index == 0:
            # Merging rewrites the base weights in place, so it comes last for this model.
            merged_model = peft_model.merge_and_unload().to(torch.bfloat16)
            merged_model.save_pretrained(str(merged), safe_serialization=True)
            AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(merged))
            model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
            model = model.to(chosen.device)
        else:
            model = peft_model.unload()
    return adapters, merged


def open_engine(
    chosen: Profile, directory: Path, adapters: dict[str, Path]
) -> tuple[Any, dict[str, Any]]:
    """A LocalEngine on `directory` with `adapters` loaded; its load times and resident memory."""
    from evalhub.serving.local.engine import LocalEngine

    gpubench.free_memory()
    started = time.perf_counter()
    engine = LocalEngine(directory, device=chosen.device)
    loaded = time.perf_counter()
    for name, path in adapters.items():
        engine.load_adapter(name, path)
    gpubench.synchronize(chosen.device)
    return engine, {
        "engine_load_seconds": round(loaded - started, 2),
        "adapter_load_seconds": round(time.perf_counter() - loaded, 2),
        "resident_memory_bytes": gpubench.allocated_bytes(chosen.device),
    }


def serve(
    engine: Any, chosen: Profile, requests: list[Request]
) -> tuple[list[str], dict[str, Any]]:
    """Greedy answers to `requests` one after another, each on its adapter; outputs and stats."""
    from evalhub.serving.local.generation import GenerationRequest, SamplingParams

    sampling = SamplingParams(max_tokens=chosen.serve_max_tokens, temperature=0.0)
    outputs: list[str] = []
    latencies: list[float] = []
    tokens = 0
    gpubench.reset_peak(chosen.device)
    started = time.perf_counter()
    for request in requests:
        sent = time.perf_counter()
        result = engine.generate(
            GenerationRequest(adapter=request.adapter, messages=request.messages, sampling=sampling)
        )
        gpubench.synchronize(chosen.device)
        latencies.append(time.perf_counter() - sent)
        outputs.append(result.text)
        tokens += result.completion_tokens
    seconds = time.perf_counter() - started
    return outputs, {
        "requests": len(requests),
        "completion_tokens": tokens,
        "seconds": round(seconds, 3),
        "requests_per_second": len(requests) / seconds,
        "tokens_per_second": tokens / seconds,
        "p50_latency_s": statistics.median(latencies),
        "max_latency_s": max(latencies),
        "peak_memory_bytes": gpubench.peak_bytes(chosen.device),
    }


def common_prefix_length(first: str, second: str) -> int:
    pairs = zip(first, second, strict=False)
    return next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(first), len(second)))


def compare(requests: list[Request], expected: dict[int, str], actual: list[str]) -> dict[str, Any]:
    """Per-arm counts of answers that differ between `actual` (by index) and `expected`."""
    per_arm: dict[str, dict[str, int]] = {}
    examples: list[dict[str, Any]] = []
    for request in requests:
        if request.index not in expected:
            continue
        counts = per_arm.setdefault(request.adapter or "base", {"compared": 0, "mismatches": 0})
        counts["compared"] += 1
        want, got = expected[request.index], actual[request.index]
        if want != got:
            counts["mismatches"] += 1
            if len(examples) < 3:
                examples.append(
                    {
                        "request": request.index,
                        "adapter": request.adapter or "base",
                        "common_prefix_chars": common_prefix_length(want, got),
                        "expected": want[:120],
                        "got": got[:120],
                    }
                )
    return {
        "compared": sum(counts["compared"] for counts in per_arm.values()),
        "mismatches": sum(counts["mismatches"] for counts in per_arm.values()),
        "per_arm": per_arm,
        "examples": examples,
    }


def run(deadline: Deadline, path: Path) -> dict[str, Any]:
    """Every step, guarded; the report is rewritten to `path` after each so a kill keeps the rest."""
    chosen = gpubench.profile()
    report: dict[str, Any] = {
        "profile": chosen.name,
        "device": chosen.device,
        "engine": "evalhub.serving.local.engine.LocalEngine (bf16 on CUDA, float32 on CPU)",
        "adapters": chosen.adapters,
        "lora": {"rank": LORA_RANK, "targets": "all-linear + lm_head", "init": "random A and B"},
        "max_tokens": chosen.serve_max_tokens,
        "decoding": "greedy, one request at a time (the local backend serialises requests)",
        "errors": {},
        "skipped": [],
    }
    guess = STEP_SECONDS_GUESS.get(chosen.device, 20.0)

    def guarded(step: str, action: Callable[[], T]) -> T | None:
        started = time.perf_counter()
        log(f"-- serving: {step}")
        try:
            value = action()
            log(f"-- serving: {step} done in {time.perf_counter() - started:.1f}s")
            return value
        except Exception as error:
            report["errors"][step] = gpubench.error_record(error)
            log(f"FAILED: serving step '{step}': {report['errors'][step]['error']}")
            return None
        finally:
            gpubench.free_memory()
            gpubench.write_json(path, report)

    base_dir = guarded("random base model", lambda: gpubench.ensure_base_model(chosen))
    if base_dir is None:
        return report
    root = gpubench.work_dir() / f"serving-{chosen.name}"
    prepared = guarded("adapters and merged model", lambda: make_adapters(chosen, base_dir, root))
    if prepared is None:
        return report
    adapters, merged_dir = prepared
    requests = make_requests(chosen)

    def multi_adapter() -> list[str]:
        engine, loads = open_engine(chosen, base_dir, adapters)
        # Warm-up, and a check that the adapters matter: one prompt, base and every adapter.
        probe = [Request(0, name, requests[0].messages) for name in [None, *adapters]]
        answers, _ = serve(engine, chosen, probe)
        report["distinct_answers_base_and_adapters"] = f"{len(set(answers))}/{len(answers)}"
        outputs, report["multi_adapter_mixed"] = serve(engine, chosen, requests)
        report["multi_adapter_mixed"] |= loads
        if deadline.allows(2 * guess):
            one = [replace(request, adapter=adapter_name(0)) for request in requests]
            _, report["multi_adapter_one_adapter"] = serve(engine, chosen, one)
        else:
            report["skipped"].append("same engine, all on one adapter: time budget")
        return outputs

    mixed = guarded("multi-adapter engine, mixed stream", multi_adapter)

    def merged_model() -> list[str]:
        engine, loads = open_engine(chosen, merged_dir, {})
        as_one_model = [replace(request, adapter=None) for request in requests]
        serve(engine, chosen, as_one_model[:1])  # warm-up
        outputs, report["merged_single_model"] = serve(engine, chosen, as_one_model)
        report["merged_single_model"] |= loads
        return outputs

    merged = guarded("merged model", merged_model)

    def alone(arm: str | None) -> dict[int, str]:
        engine, _ = open_engine(chosen, base_dir, {arm: adapters[arm]} if arm else {})
        mine = [request for request in requests if request.adapter == arm]
        outputs, _ = serve(engine, chosen, mine)
        return {request.index: output for request, output in zip(mine, outputs, strict=True)}

    if mixed is not None:
        reference: dict[int, str] = {}
        for arm in [None, *adapters]:
            label = f"requests alone, {arm or 'base'}"
            if not deadline.allows(guess):
                report["skipped"].append(f"{label}: time budget")
                continue
            reference |= guarded(label, lambda arm=arm: alone(arm)) or {}
        report["correctness"] = compare(requests, reference, mixed)
        if merged is not None:
            adapter0 = {r.index: merged[r.index] for r in requests if r.adapter == adapter_name(0)}
            report["merged_agreement"] = compare(requests, adapter0, mixed)
    mixed_stats, merged_stats = report.get("multi_adapter_mixed"), report.get("merged_single_model")
    if mixed_stats and merged_stats:
        report["multi_vs_merged_tokens_per_second"] = (
            mixed_stats["tokens_per_second"] / merged_stats["tokens_per_second"]
        )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deadline", type=float, default=None, help="epoch seconds")
    args = parser.parse_args()
    started = time.perf_counter()
    path = gpubench.out_dir() / RESULTS_FILE
    report = run(Deadline(args.deadline), path)
    report["wall_seconds"] = round(time.perf_counter() - started, 2)
    gpubench.write_json(path, report)
    log(f"serving part done in {report['wall_seconds']:.0f}s; wrote {path}")
    correctness = report.get("correctness") or {}
    mismatches = correctness.get("mismatches")
    ratio = report.get("multi_vs_merged_tokens_per_second")
    log(
        "result: "
        + (f"{len(report['errors'])} failed steps, " if report["errors"] else "")
        + (f"multi-adapter at {ratio:.2f}x merged tokens/s, " if ratio else "")
        + (
            f"{mismatches} of {correctness['compared']} answers differ from the request alone"
            if correctness
            else "correctness not checked"
        )
    )
    if report["errors"] or mismatches or not correctness.get("compared"):
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
