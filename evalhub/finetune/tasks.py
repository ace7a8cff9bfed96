"""Synthetic chat tasks with known answers, so tests and the demo can show that training really learns."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

# Short common words; the tiny base model sees all of them (lower and upper case) in its pretraining.
WORDS: tuple[str, ...] = (
    "cat", "dog", "bird", "fish", "tree", "star", "moon", "sun", "rain", "snow",
    "wind", "fire", "rock", "sand", "lake", "road", "book", "door", "lamp", "cup",
    "milk", "bread", "apple", "lemon", "salt", "gold", "iron", "wood", "ship", "boat",
    "car", "bus", "king", "queen", "horse", "mouse", "frog", "bear", "wolf", "fox",
)  # fmt: skip

Split = Literal["train", "held_out"]


def is_held_out(words: Iterable[str]) -> bool:
    """About one word set in ten is held out, decided by a hash so every seed agrees on the split."""
    key = " ".join(sorted(words)).encode()
    return hashlib.sha256(key).digest()[0] % 10 == 0


def upper_case_task(
    n: int, seed: int = 0, split: Split = "train", min_words: int = 2, max_words: int = 4
) -> list[dict[str, Any]]:
    """`n` chat examples "upper: cat dog" -> "CAT DOG".

    Train and held-out examples never share a set of words, so held-out accuracy measures
    generalisation to unseen combinations rather than recall.
    """
    rng = random.Random(f"upper-{seed}-{split}")
    want_held_out = split == "held_out"
    examples: list[dict[str, Any]] = []
    while len(examples) < n:
        words = rng.sample(WORDS, rng.randint(min_words, max_words))
        if is_held_out(words) != want_held_out:
            continue
        text = " ".join(words)
        examples.append(
            {
                "messages": [
                    {"role": "user", "content": f"upper: {text}"},
                    {"role": "assistant", "content": text.upper()},
                ]
            }
        )
    return examples


def json_task(
    n: int, seed: int = 0, split: Split = "train", min_words: int = 2, max_words: int = 4
) -> list[dict[str, Any]]:
    """`n` chat examples "json: cat dog" -> '{"words": ["cat", "dog"]}': an answer format that a
    deployment can check online (json_valid) and a bad adapter breaks."""
    rows = upper_case_task(n, seed, split, min_words, max_words)
    for row in rows:
        user, assistant = row["messages"]
        words = user["content"].removeprefix("upper: ").split()
        user["content"] = "json: " + " ".join(words)
        assistant["content"] = json.dumps({"words": words})
    return rows


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object a line (the OpenAI fine-tuning file format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file of objects (no validation: see `data.validate_chat_file`)."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
