"""Eval runs, their cases and the paired comparison of two runs."""

from __future__ import annotations

from typing import Any

from dashboard.models import ReadModel


class EvalRun(ReadModel):
    id: str
    status: str
    suite_name: str
    model: str
    model_version: str | None = None
    metrics: dict[str, Any] = {}
    overall_score: float | None = None
    passed: bool | None = None
    case_count: int
    created_at: str

    def value(self, metric: str) -> float | None:
        entry = self.metrics.get(metric)
        return entry.get("value") if isinstance(entry, dict) else None


class MetricComparison(ReadModel):
    metric: str
    n: int
    baseline_mean: float | None = None
    candidate_mean: float | None = None
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    wins: int
    ties: int
    losses: int


class Comparison(ReadModel):
    suite_name: str
    shared_cases: int
    confidence: float
    metrics: dict[str, MetricComparison]
    slices: dict[str, Any] = {}
    regressions: list[dict[str, Any]] = []
    notes: list[str] = []


class Case(ReadModel):
    case_id: str
    output: str
    scores: dict[str, Any] | None = None
    tags: list[str] = []
