"""The files a user would write: data, the suite, the sweep, the jobs, the rollout's analysis."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import yaml

from evalhub.demo.profiles import BASE_PRICE, Base


def _suite(base: Base, judge: bool) -> dict[str, Any]:
    from evalhub.finetune.tasks import ORDER_SCHEMA

    metrics: list[dict[str, Any]] = [
        {"name": "exact_match"},
        {"name": "json_schema", "options": {"schema": ORDER_SCHEMA}, "threshold": 0.9},
        {"name": "rougeL"},
        {"name": "semantic_similarity"},
        {"name": "latency"},
        # Tokens at the base's price; with its prices, the suite runs on any server.
        {"name": "cost", "options": {"model": base.name, "prices": {base.name: BASE_PRICE}}},
    ]
    if judge:  # EVALHUB_JUDGE_BASE_URL names an OpenAI-compatible judge
        criteria = "The JSON names who brings what where, exactly as the sentence says."
        metrics.append({"name": "llm_judge", "options": {"criteria": criteria}})
    return {
        "name": "orders",
        "version": "1",
        "description": "Turn a sentence into a JSON object that matches the orders schema.",
        "dataset": "json-held-out",
        "sampling": {"temperature": 0, "max_tokens": 48, "seed": 0},
        "metrics": metrics,
    }


def _scrambled(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The same rows with each answer's characters shuffled: data that teaches broken JSON."""
    rng = random.Random(seed)
    scrambled = []
    for row in rows:
        *prompt, answer = row["messages"]
        letters = list(answer["content"])
        rng.shuffle(letters)
        scrambled.append({"messages": [*prompt, {**answer, "content": "".join(letters)}]})
    return scrambled


def write_files(work: Path, base: Base) -> None:
    from evalhub.finetune.tasks import ORDER_SCHEMA, as_eval_cases, order_task, write_jsonl

    sizes = base.sizes
    train = order_task(sizes.train_examples, seed=0)
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(
        work / "held-out.jsonl", as_eval_cases(order_task(sizes.held_out, split="held_out"))
    )
    write_jsonl(work / "scrambled.jsonl", _scrambled(train[:400], seed=0))
    judge = bool(os.environ.get("EVALHUB_JUDGE_BASE_URL"))
    (work / "suite.yaml").write_text(yaml.safe_dump(_suite(base, judge), sort_keys=False))
    sweep = {
        "name": "json",
        "base": base.name,
        "dataset": "json-train",
        "suite": "suite.yaml",
        "metric": "exact_match",
        "search": "grid",
        "space": {"learning_rate": list(base.sweep)},
        "fixed": {"method": base.sweep_method, **dict(base.options),
                  "max_steps": sizes.trial_steps,
                  "batch_size": sizes.batch_size, "warmup_ratio": 0.05},
        "eval_every": sizes.eval_every,
    }  # fmt: skip
    (work / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    broken = {
        "model": base.name,
        "training_file": "scrambled.jsonl",
        "suffix": "json",
        "seed": 0,
        "method": "lora",
        "options": dict(base.options),
        "training": {"max_steps": sizes.broken_steps, "warmup_ratio": 0.05},
        "hyperparameters": {"batch_size": sizes.batch_size, "learning_rate_multiplier": 15},
    }
    (work / "broken-job.yaml").write_text(yaml.safe_dump(broken, sort_keys=False))
    schema_metric = {"name": "json_schema", "schema": ORDER_SCHEMA}
    (work / "online-metric.json").write_text(json.dumps(schema_metric))
    analysis = {
        "guards": [
            {"name": "json_schema", "margin": 0.1, "options": {"schema": ORDER_SCHEMA}},
            {"name": "error_rate", "margin": 0.1},
        ],
        "min_requests": sizes.min_requests,
        "max_wait_seconds": 600,
    }
    (work / "analysis.json").write_text(_one_per_line(analysis))


def _one_per_line(value: dict[str, Any]) -> str:
    """JSON with each key, and each item of a list, on a line of its own: short enough to read."""

    def item(inner: Any) -> str:
        if isinstance(inner, list):
            return "[\n" + ",\n".join(f"    {json.dumps(entry)}" for entry in inner) + "\n  ]"
        return json.dumps(inner)

    lines = [f"  {json.dumps(key)}: {item(inner)}" for key, inner in value.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"
