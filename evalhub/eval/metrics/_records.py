"""Helpers for metrics computed from generation records rather than text."""

from __future__ import annotations

from evalhub.eval.metrics._base import ScoringContext
from evalhub.eval.record import GenerationRecord


def aligned_records(outputs: list[str], context: ScoringContext) -> list[GenerationRecord | None]:
    if context.records is None:
        return [None] * len(outputs)
    if len(context.records) != len(outputs):
        raise ValueError(f"{len(context.records)} generation records for {len(outputs)} outputs")
    return list(context.records)
