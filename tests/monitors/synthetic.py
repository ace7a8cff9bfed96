"""Synthetic gateway traffic drawn from a known distribution, for the monitors' simulations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

SUPPORT_WORDS = [
    "order",
    "refund",
    "delivery",
    "invoice",
    "account",
    "password",
    "shipping",
    "cancel",
    "help",
    "thanks",
    "please",
    "when",
]
CODE_WORDS = [
    "def",
    "return",
    "import",
    "x[0]",
    "f(x):",
    "404",
    "{key:",
    "1}",
    "==",
    "for",
    "in",
    "range(10)",
    "raise",
]
START = datetime(2026, 12, 1, tzinfo=UTC)


def texts(rng: np.random.Generator, words: list[str], mean_words: float, n: int) -> list[str]:
    counts = rng.poisson(mean_words, n) + 1
    return [" ".join(rng.choice(words, count)) for count in counts]


def traffic(
    rng: np.random.Generator,
    n: int,
    *,
    words: list[str] = SUPPORT_WORDS,
    prompt_words: float = 12,
    response_words: float = 40,
    latency_ms: float = 400,
    error_rate: float = 0.02,
    arm: str = "control",
    version: str = "bot/2",
    deployment: str = "support",
) -> pd.DataFrame:
    """`n` requests of one deployment arm, with the columns of the gateway's traffic records."""
    prompts = texts(rng, words, prompt_words, n)
    failed = rng.random(n) < error_rate
    responses = [
        None if bad else text
        for bad, text in zip(failed, texts(rng, words, response_words, n), strict=True)
    ]
    return pd.DataFrame(
        {
            "request_id": [f"{arm}-{index}-{rng.integers(1 << 40)}" for index in range(n)],
            "created_at": [
                START + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 7200, n))
            ],
            "deployment": deployment,
            "arm": arm,
            "version": version,
            "status": np.where(failed, 500, 200),
            "error": [("upstream failed" if bad else None) for bad in failed],
            "latency_ms": rng.lognormal(np.log(latency_ms), 0.3, n),
            "ttft_ms": rng.lognormal(np.log(latency_ms / 4), 0.3, n),
            "prompt_tokens": pd.array([2 * len(text.split()) for text in prompts], dtype="Int64"),
            "completion_tokens": pd.array(
                [None if text is None else 2 * len(text.split()) for text in responses],
                dtype="Int64",
            ),
            "cost": rng.uniform(0.0001, 0.001, n),
            "prompt": prompts,
            "response": responses,
        }
    )


def embeddings(
    rng: np.random.Generator, n: int, *, shift: float = 0.0, dim: int = 64
) -> np.ndarray:
    """Unit vectors around a few topic centres, like sentence embeddings; `shift` moves every
    centre along one direction (a change of topic)."""
    centres = np.random.default_rng(0).normal(size=(4, dim))
    centres[:, 0] += shift
    points = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=1.5, size=(n, dim))
    return points / np.linalg.norm(points, axis=1, keepdims=True)
