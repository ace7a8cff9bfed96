"""Choosing an arm: by weight, sticky per user.

A user's key hashes to a bucket in [0, 100); arms own consecutive bucket ranges in their listed
order. Raising the last arm's weight from 5 to 25 keeps every user it already had: a rollout
moves users one way only.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

from registry.errors import invalid

BUCKETS = 10_000


def bucket(deployment: str, key: str) -> float:
    digest = hashlib.sha256(f"{deployment}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS * 100 / BUCKETS


def pick_arm(
    deployment: str,
    arms: Sequence[dict[str, Any]],
    key: str | None,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    point = bucket(deployment, key) if key else (rng or random).random() * 100
    edge = 0.0
    for arm in arms:
        edge += arm["weight"]
        if point < edge:
            return arm
    return next(arm for arm in reversed(arms) if arm["weight"] > 0)


def check_arms(arms: Sequence[dict[str, Any]]) -> None:
    """Arms have unique names, weights from 0 to 100 that sum to 100, and a model reference."""
    if not arms:
        raise invalid("a deployment needs at least one arm")
    names = [arm["name"] for arm in arms]
    if len(set(names)) != len(names):
        raise invalid(f"arm names must be unique, got {names}")
    for arm in arms:
        if not 0 <= arm["weight"] <= 100:
            raise invalid(f"arm {arm['name']!r}: weight must be between 0 and 100")
    total = sum(arm["weight"] for arm in arms)
    if abs(total - 100) > 1e-9:
        raise invalid(f"arm weights must sum to 100, got {total:g}")
