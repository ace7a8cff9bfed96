"""DoRA answers on the local engine with and without peft's DoRA cache.

peft recomputes a DoRA layer's weight norm (base weight + B·A) at every forward, so at every
generated token; the local engine keeps peft's DoRA cache on for CPU engines, which computes it
once per adapter. This times greedy answers of one rank-16 DoRA adapter (random B, on every
attention and MLP projection) on SmolLM2-135M-Instruct when `make smollm2` installed it, else on
the tiny model, with the cache off and on, and checks that the answers are the same text.

Run: .venv/bin/python bench/dora_cache.py [--prompts 3] [--max-tokens 24]
Prints a table and writes bench/results/dora_cache.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from peft.helpers import DoraCaching
from rich.console import Console
from rich.table import Table

# Run as a script, this file's folder comes first on sys.path and bench/registry.py would hide the
# `registry` package that evalhub imports (lazily, below); drop that folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

PROMPTS = [
    "extract: the dog takes the lamp to the star",
    "extract: the cat takes the cup to the tree",
    "extract: the fox takes the key to the moon",
    "extract: the owl takes the book to the lake",
]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_model(root: Path) -> tuple[str, Path]:
    from evalhub.finetune.gguf import GgufError, gguf_to_directory, packaged_smollm2

    try:
        return "smollm2", gguf_to_directory(packaged_smollm2(), root / "smollm2")
    except GgufError:
        from evalhub.finetune.tiny import build_tiny_model

        return "tiny", build_tiny_model(root / "tiny", seed=0)


def dora_adapter(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=16, lora_alpha=32, use_dora=True, target_modules=TARGETS),
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    model.save_pretrained(str(out))
    return out


def answer_all(engine: Any, prompts: list[str], max_tokens: int) -> tuple[float, int, list[str]]:
    from evalhub.sampling import SamplingParams
    from evalhub.serving.local.generation import GenerationRequest

    started, tokens, texts = time.perf_counter(), 0, []
    for prompt in prompts:
        result = engine.generate(
            GenerationRequest(
                adapter="dora",
                messages=[{"role": "user", "content": prompt}],
                sampling=SamplingParams(temperature=0, max_tokens=max_tokens),
            )
        )
        tokens += result.completion_tokens
        texts.append(result.text)
    return time.perf_counter() - started, tokens, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from evalhub.serving.local.engine import LocalEngine

    with tempfile.TemporaryDirectory(prefix="bench-dora-") as work:
        name, base = base_model(Path(work))
        adapter = dora_adapter(base, Path(work) / "dora")
        engine = LocalEngine(base, device="cpu")  # turns the cache on
        engine.load_adapter("dora", adapter)
        prompts = PROMPTS[: args.prompts]
        runs = {}
        for cached in (False, True):
            DoraCaching()(enabled=cached)  # the process-wide switch the engine sets
            runs[cached] = answer_all(engine, prompts, args.max_tokens)
    (off_s, tokens, off_texts), (on_s, _, on_texts) = runs[False], runs[True]
    result = {
        "model": name,
        "prompts": len(prompts),
        "tokens": tokens,
        "uncached_s": round(off_s, 2),
        "cached_s": round(on_s, 2),
        "speedup": round(off_s / on_s, 2),
        "same_text": off_texts == on_texts,
    }
    table = Table(title=f"DoRA rank 16 on {name}, {len(prompts)} greedy answers, 1 thread")
    for column in ("cache", "seconds", "tokens", "ms/token", "same text"):
        table.add_column(column)
    for label, seconds in (("off (peft's default)", off_s), ("on (the local engine)", on_s)):
        table.add_row(
            label,
            f"{seconds:.2f}",
            str(tokens),
            f"{1000 * seconds / max(1, tokens):.0f}",
            str(result["same_text"]),
        )
    Console().print(table)
    out = Path(__file__).parent / "results" / "dora_cache.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
