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


# The sentence-to-JSON task: who takes what where. Its words are among WORDS, so the tiny base
# knows them; the schema lists them, so an answer with a word from elsewhere fails it.
ANIMALS: tuple[str, ...] = (
    "cat", "dog", "bird", "fish", "horse", "mouse", "frog", "bear", "wolf", "fox",
)  # fmt: skip
ITEMS: tuple[str, ...] = (
    "book", "lamp", "cup", "apple", "lemon", "boat", "car", "bus", "ship", "door",
)  # fmt: skip
PLACES: tuple[str, ...] = (
    "lake", "road", "tree", "moon", "sand", "rock", "star", "sun", "snow", "wood",
)  # fmt: skip
ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "who": {"enum": list(ANIMALS)},
        "item": {"enum": list(ITEMS)},
        "to": {"enum": list(PLACES)},
    },
    "required": ["who", "item", "to"],
    "additionalProperties": False,
}


def order_task(n: int, seed: int = 0, split: Split = "train") -> list[dict[str, Any]]:
    """`n` chat examples "extract: the fox takes the cup to the lake" -> '{"who": "fox",
    "item": "cup", "to": "lake"}', answers valid against `ORDER_SCHEMA`.

    An answer can match the schema yet be wrong (another animal, another place), so the task is
    measured by more than exact match. Train and held-out examples never share a (who, item, to)
    triple; the held-out split has 89 of the 1,000, each at most once.
    """
    rng = random.Random(f"order-{seed}-{split}")
    want_held_out = split == "held_out"
    triples = [
        (who, item, place)
        for who in ANIMALS
        for item in ITEMS
        for place in PLACES
        if is_held_out((who, item, place)) == want_held_out
    ]
    if want_held_out and n > len(triples):
        raise ValueError(f"the held-out split has {len(triples)} distinct examples, not {n}")
    # Held-out cases are distinct (a repeated case would count twice); training rows repeat.
    chosen = rng.sample(triples, n) if want_held_out else rng.choices(triples, k=n)
    return [
        {
            "messages": [
                {"role": "user", "content": f"extract: the {who} takes the {item} to the {place}"},
                {
                    "role": "assistant",
                    "content": json.dumps({"who": who, "item": item, "to": place}),
                },
            ]
        }
        for who, item, place in chosen
    ]


def as_eval_cases(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat rows as eval cases (`id`, the conversation before the answer, `expected`), for a
    held-out suite of the same task."""
    return [
        {
            "id": f"case-{index:02d}",
            "messages": row["messages"][:-1],
            "expected": row["messages"][-1]["content"],
        }
        for index, row in enumerate(rows)
    ]


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
