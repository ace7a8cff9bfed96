"""An experiment's leaderboard: each trial's selected checkpoint on the held-out suite, with the
paired interval of its difference from the baseline, and whether it can be told from the best.

"Cannot be told from the best" means the paired 95% interval of (trial - best) on the selection
metric contains 0: Tango's score interval for 0/1 metrics, a studentized bootstrap otherwise
(`evalhub.eval.compare`), the same intervals that `evalhub eval compare` and the gate print.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from evalhub.eval.compare import MetricComparison, compare_runs_on
from evalhub.eval.record import EvalRun
from evalhub.eval.store import EvalStore
from evalhub.finetune.estimate import estimate
from evalhub.jobs.queue import Job, JobStatus
from evalhub.platform import Platform

CONFIDENCE = 0.95


class TrialResult(BaseModel):
    trial: int
    job_id: str
    status: str
    params: dict[str, Any]
    rank: int | None = Field(default=None, description="1 is the best; trials without a score last")
    version: str | None = None
    selected_step: int | None = None
    run_id: str | None = Field(default=None, description="The selected checkpoint's eval run.")
    value: float | None = Field(default=None, description="The selection metric on the suite.")
    vs_baseline: MetricComparison | None = None
    vs_best: MetricComparison | None = None
    best: bool = False
    tied_with_best: bool = Field(
        default=False, description="The interval of (trial - best) contains 0."
    )
    metrics: dict[str, float | None] = Field(default_factory=dict)
    train_seconds: float | None = None
    trained_tokens: int | None = None
    memory_estimate_bytes: int | None = None
    cost: float | None = Field(
        default=None, description="train_seconds x EVALHUB_TRAIN_PRICE_PER_HOUR"
    )
    error: str | None = None


class Leaderboard(BaseModel):
    metric: str
    higher_is_better: bool
    confidence: float = CONFIDENCE
    baseline: str
    baseline_run_id: str | None = None
    baseline_value: float | None = None
    trials: list[TrialResult]


def baseline_run_id(platform: Platform, experiment_id: str) -> str | None:
    for event in platform.jobs.events(experiment_id, limit=None):
        if (event.data or {}).get("type") == "baseline_eval":
            return str(event.data["run_id"])  # type: ignore[index]
    return None


def rank(platform: Platform, experiment: Job, trials: list[Job]) -> Leaderboard:
    """The leaderboard as it stands: finished trials ranked, the rest listed after them."""
    payload = experiment.payload
    metric, higher = payload["plan"]["metric"], payload["plan"]["higher_is_better"]
    store = EvalStore(platform.engine)
    baseline_id = baseline_run_id(platform, experiment.id)
    baseline = store.run(baseline_id) if baseline_id else None
    rows, runs = [], {}
    for entry, job in zip(payload["trials"], trials, strict=True):
        row = _row(platform, entry, job)
        if row.run_id is not None:
            runs[row.trial] = run = store.run(row.run_id)
            row.metrics = {name: m.aggregate.value for name, m in run.metrics.items()}
            if baseline is not None:
                row.vs_baseline = compare_runs_on(metric, baseline, run, confidence=CONFIDENCE)
        rows.append(row)
    sign = 1 if higher else -1
    scored = sorted(
        (row for row in rows if row.value is not None),
        key=lambda row: (-sign * row.value, row.trial),  # type: ignore[operator]
    )
    for position, row in enumerate(scored, start=1):
        row.rank = position
    if scored:
        best = scored[0]
        best.best = best.tied_with_best = True
        for row in scored[1:]:
            row.vs_best = compare_runs_on(metric, runs[best.trial], runs[row.trial])
            low, high = row.vs_best.ci_low, row.vs_best.ci_high
            row.tied_with_best = low is not None and high is not None and low <= 0 <= high
    unscored = [row for row in rows if row.value is None]
    return Leaderboard(
        metric=metric,
        higher_is_better=higher,
        baseline=payload["baseline"],
        baseline_run_id=baseline_id,
        baseline_value=_value(baseline, metric),
        trials=scored + unscored,
    )


def _value(run: EvalRun | None, metric: str) -> float | None:
    return run.metrics[metric].aggregate.value if run is not None else None


def _row(platform: Platform, entry: dict[str, Any], job: Job) -> TrialResult:
    row = TrialResult(
        trial=entry["trial"],
        job_id=job.id,
        status=job.status.value,
        params=entry["params"],
        memory_estimate_bytes=_memory(platform, job),
        error=job.error,
    )
    result = job.result or {}
    if job.status is not JobStatus.SUCCEEDED or "selected" not in result:
        return row
    selected, metrics = result["selected"], result.get("metrics") or {}
    row.version = result["version_ref"]
    row.selected_step = selected["step"]
    row.run_id = selected["run_id"]
    row.value = selected["value"]
    row.train_seconds = metrics.get("train_seconds")
    row.trained_tokens = result.get("trained_tokens")
    price = platform.settings.train_price_per_hour
    if price and row.train_seconds is not None:
        row.cost = round(row.train_seconds / 3600 * price, 6)
    return row


def _memory(platform: Platform, job: Job) -> int | None:
    """The fine-tuning estimator's total for the trial's method, options and batch."""
    config = job.payload["train_config"]
    options = config["method_options"]
    base_dir = platform.registry.model_path(job.payload["base"])
    try:
        figures = estimate(
            json.loads((base_dir / "config.json").read_text()),
            config["method"],
            **{
                key: options[key]
                for key in ("rank", "target_modules", "include_lm_head")
                if key in options
            },
            batch_size=config["batch_size"],
            seq_len=config["max_seq_len"],
            dtype="float32",  # the trainer's weights (bf16 is autocast on CUDA only)
        )
    except (ValueError, TypeError, KeyError):  # a method or shape the estimator does not know
        return None
    return figures.total_bytes
