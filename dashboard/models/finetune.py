"""Fine-tuning jobs (OpenAI's shape) and their training metrics (evalhub's)."""

from __future__ import annotations

from typing import Any

from dashboard.models import ReadModel


class Job(ReadModel):
    id: str
    model: str
    status: str
    created_at: int
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    hyperparameters: dict[str, Any] = {}
    method: dict[str, Any] = {}
    evalhub: dict[str, Any] = {}


class Point(ReadModel):
    step: int
    train_loss: float | None = None
    valid_loss: float | None = None
    learning_rate: float | None = None


class RunMetrics(ReadModel):
    job_id: str
    status: str
    registered_version: str | None = None
    params: dict[str, Any] = {}
    final: dict[str, Any] = {}
    best_valid_loss: float | None = None
    peak_memory_bytes: int | None = None
    seconds: float | None = None
    series: list[Point] = []
