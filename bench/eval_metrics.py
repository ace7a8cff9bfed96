"""Metric throughput: evalhub's batched metrics against a plain per-example loop over the same
libraries, at 1,000 and 10,000 cases, plus cached re-runs (embeddings; runner generations).

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/eval_metrics.py [--sizes 1000 10000]
Writes bench/results/eval_metrics.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the handler annotation here

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evalhub.eval import Case, create_metric

WORDS = [
    "the",
    "a",
    "model",
    "answer",
    "cat",
    "dog",
    "runs",
    "quickly",
    "slowly",
    "over",
    "under",
    "report",
    "data",
    "value",
    "test",
    "train",
    "serve",
    "adapter",
    "version",
    "result",
    "metric",
    "score",
    "paris",
    "london",
    "blue",
    "green",
    "red",
    "number",
]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
SEMANTIC_MAX = 1_000  # embedding 2 x 10,000 texts on 2 shared cores takes minutes; capped
SEMANTIC_LOOP_SAMPLE = 200  # the per-example loop is timed on a sample and scaled


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16)))


def make_data(n: int, seed: int = 0) -> tuple[list[str], list[Case]]:
    rng = random.Random(seed)
    outputs, cases = [], []
    for i in range(n):
        reference = sentence(rng)
        output = reference if rng.random() < 0.3 else sentence(rng)
        if i % 10 == 0:
            output = json.dumps({"a": i})
        cases.append(Case(id=str(i), input="q", expected=reference, schema=SCHEMA))
        outputs.append(output)
    return outputs, cases


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


def score_and_aggregate(metric: Any, outputs: list[str], cases: list[Case]) -> None:
    metric.aggregate(metric.score(outputs, cases), outputs, cases)


def plain_loops() -> dict[str, Callable[[list[str], list[Case]], Any]]:
    import re

    import sacrebleu
    from jsonschema import Draft202012Validator
    from rouge_score.rouge_scorer import RougeScorer

    def rouge(kind: str) -> Callable[[list[str], list[Case]], Any]:
        def loop(outputs: list[str], cases: list[Case]) -> Any:
            scorer = RougeScorer([kind])
            return [
                scorer.score(c.expected, o)[kind].fmeasure
                for o, c in zip(outputs, cases, strict=True)
            ]

        return loop

    def json_schema(outputs: list[str], cases: list[Case]) -> Any:
        values = []
        for output, case in zip(outputs, cases, strict=True):
            try:
                Draft202012Validator(case.schema_).validate(json.loads(output))
                values.append(1.0)
            except Exception:
                values.append(0.0)
        return values

    def json_valid(outputs: list[str], cases: list[Case]) -> Any:
        values = []
        for output in outputs:
            try:
                json.loads(output)
                values.append(1.0)
            except ValueError:
                values.append(0.0)
        return values

    return {
        "exact_match": lambda o, c: [
            " ".join(x.lower().split()) == " ".join(y.expected.lower().split())
            for x, y in zip(o, c, strict=True)
        ],
        "contains": lambda o, c: [
            y.expected.lower() in x.lower() for x, y in zip(o, c, strict=True)
        ],
        "regex": lambda o, c: [re.search(r"\bcat\b", x) is not None for x in o],
        "json_valid": json_valid,
        "json_schema": json_schema,
        "bleu": lambda o, c: (
            [sacrebleu.sentence_bleu(x, [y.expected]).score for x, y in zip(o, c, strict=True)],
            sacrebleu.corpus_bleu(o, [[y.expected for y in c]]).score,
        ),
        "chrf": lambda o, c: (
            [sacrebleu.sentence_chrf(x, [y.expected]).score for x, y in zip(o, c, strict=True)],
            sacrebleu.corpus_chrf(o, [[y.expected for y in c]]).score,
        ),
        "rouge1": rouge("rouge1"),
        "rouge2": rouge("rouge2"),
        "rougeL": rouge("rougeL"),
    }


def semantic_plain(outputs: list[str], cases: list[Case]) -> list[float]:
    from evalhub.eval.metrics.semantic_similarity import default_model_path, load_model

    model = load_model(default_model_path())
    values = []
    for output, case in zip(outputs, cases, strict=True):
        a, b = model.encode([output, case.expected], normalize_embeddings=True)
        values.append(float(a @ b))
    return values


def bench_metrics(sizes: list[int]) -> list[dict[str, Any]]:
    from evalhub.eval.metrics.semantic_similarity import (
        default_model_path,
        embedding_cache,
        load_model,
    )

    rows = []
    loops = plain_loops()
    options = {"regex": {"pattern": r"\bcat\b"}}
    load_model(default_model_path())  # model load is not throughput
    for n in sizes:
        outputs, cases = make_data(n)
        for name, loop in loops.items():
            metric = create_metric(name, **options.get(name, {}))
            ours = timed(score_and_aggregate, metric, outputs, cases)
            plain = timed(loop, outputs, cases)
            rows.append(_row(name, n, ours, plain))
        if n <= SEMANTIC_MAX:
            embedding_cache(default_model_path()).clear()
            metric = create_metric("semantic_similarity")
            first = timed(metric.score, outputs, cases)
            rerun = timed(metric.score, outputs, cases)
            sample = SEMANTIC_LOOP_SAMPLE
            plain = timed(semantic_plain, outputs[:sample], cases[:sample]) * n / sample
            row = _row("semantic_similarity", n, first, plain)
            row.update(cached_rerun_s=rerun, cached_speedup=first / rerun)
            rows.append(row)
    return rows


def _row(name: str, n: int, ours: float, plain: float) -> dict[str, Any]:
    return {
        "metric": name,
        "cases": n,
        "evalhub_s": ours,
        "plain_loop_s": plain,
        "evalhub_cases_per_s": n / ours,
        "plain_cases_per_s": n / plain,
        "speedup": plain / ours,
    }


def bench_runner(n: int, delay_s: float) -> dict[str, Any]:
    """First run against a local server answering after `delay_s`, then the cached re-run."""
    import uvicorn
    from fastapi import FastAPI

    from evalhub.eval import RunOptions, SQLiteCache, Target, load_suite, run_suite

    app = FastAPI()
    calls = {"n": 0}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        calls["n"] += 1
        await asyncio.sleep(delay_s)
        text = body["messages"][-1]["content"][::-1]
        message = {"role": "assistant", "content": text}
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
        }

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        rng = random.Random(1)
        lines = [
            json.dumps({"id": str(i), "input": sentence(rng), "expected": "x"}) for i in range(n)
        ]
        (root / "cases.jsonl").write_text("\n".join(lines) + "\n")
        (root / "suite.yaml").write_text(
            "name: bench\nversion: 1\ndataset: cases.jsonl\nmetrics: [exact_match, rouge1]\n"
        )
        suite = load_suite(root / "suite.yaml")
        target = Target(base_url=f"http://127.0.0.1:{port}/v1", model="m")
        options = RunOptions(concurrency=16)
        first = timed(
            lambda: run_suite(suite, target, cache=SQLiteCache(root / "c.db"), options=options)
        )
        first_calls = calls["n"]
        assert first_calls == n, f"the first run made {first_calls} calls for {n} cases"
        rerun = timed(
            lambda: run_suite(suite, target, cache=SQLiteCache(root / "c.db"), options=options)
        )
    server.should_exit = True
    thread.join(timeout=5)
    return {
        "cases": n,
        "server_delay_s": delay_s,
        "first_run_s": first,
        "cached_rerun_s": rerun,
        "speedup": first / rerun,
        "calls_first": first_calls,
        "calls_rerun": calls["n"] - first_calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--runner-cases", type=int, default=1_000)
    parser.add_argument("--runner-delay", type=float, default=0.2)
    args = parser.parse_args()
    rows = bench_metrics(args.sizes)
    runner = bench_runner(args.runner_cases, args.runner_delay)
    print(
        f"{'metric':<20}{'cases':>7}{'evalhub/s':>12}{'plain/s':>12}{'speedup':>9}{'cached x':>10}"
    )
    for row in rows:
        cached = f"{row['cached_speedup']:.0f}" if "cached_speedup" in row else "-"
        print(
            f"{row['metric']:<20}{row['cases']:>7}{row['evalhub_cases_per_s']:>12.0f}"
            f"{row['plain_cases_per_s']:>12.0f}{row['speedup']:>9.2f}{cached:>10}"
        )
    print(
        f"runner, {runner['cases']} cases at {runner['server_delay_s']}s/call: first "
        f"{runner['first_run_s']:.2f}s ({runner['calls_first']} calls), cached re-run "
        f"{runner['cached_rerun_s']:.2f}s ({runner['calls_rerun']} calls), "
        f"{runner['speedup']:.0f}x"
    )
    out = Path(__file__).parent / "results" / "eval_metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"metrics": rows, "runner": runner}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
