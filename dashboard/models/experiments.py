"""Experiments and their leaderboards (evalhub's /api/v1/experiments)."""

from __future__ import annotations

from typing import Any

from dashboard.models import ReadModel


class Interval(ReadModel):
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    interval: str = "none"


class TrialResult(ReadModel):
    trial: int
    job_id: str
    status: str
    params: dict[str, Any]
    rank: int | None = None
    version: str | None = None
    selected_step: int | None = None
    value: float | None = None
    vs_baseline: Interval | None = None
    best: bool = False
    tied_with_best: bool = False
    metrics: dict[str, float | None] = {}
    train_seconds: float | None = None
    trained_tokens: int | None = None
    memory_estimate_bytes: int | None = None
    cost: float | None = None
    error: str | None = None


class Leaderboard(ReadModel):
    metric: str
    higher_is_better: bool = True
    baseline: str
    baseline_value: float | None = None
    trials: list[TrialResult] = []


class Experiment(ReadModel):
    id: str
    name: str
    status: str
    metric: str
    baseline: str
    output_model: str
    alias: str
    trials_total: int
    trials_finished: int
    leaderboard: Leaderboard
    winner: str | None = None
    error: str | None = None
