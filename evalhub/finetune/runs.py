"""Fine-tuning jobs as experiment runs: their parameters, metric series, and side-by-side compare.

What MLflow users open a run page for: which settings a run used, how its loss moved, what it
cost, and which of two runs to keep. The series are the job's metrics events; nothing extra is
recorded to read them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from evalhub.finetune.protocol import FineTuningJob
from evalhub.finetune.service import find_job, job_view
from evalhub.platform import Platform
from registry.errors import invalid

MAX_COMPARED = 10


class MetricPoint(BaseModel):
    step: int
    train_loss: float | None = None
    valid_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    peak_memory_bytes: int | None = None


class RunSummary(BaseModel):
    job_id: str
    status: str
    fine_tuned_model: str | None
    registered_version: str | None
    params: dict[str, Any] = Field(description="What the run was given: base, data, method, ...")
    final: dict[str, Any] = Field(description="The job's final metrics (after it succeeded)")
    best_valid_loss: float | None
    mean_tokens_per_second: float | None
    peak_memory_bytes: int | None
    seconds: float | None = Field(description="From creation to finish")


class RunMetrics(RunSummary):
    series: list[MetricPoint]


class RunComparison(BaseModel):
    runs: list[RunSummary]
    differing_params: list[str] = Field(description="The parameters that are not the same in all")


def _params(view: FineTuningJob) -> dict[str, Any]:
    extra = view.evalhub
    params: dict[str, Any] = {
        "base": extra["base"],
        "train_dataset": extra["train_dataset"],
        "validation_dataset": extra["validation_dataset"],
        "method": extra["method"],
        "learning_rate": extra["learning_rate"],
        "total_steps": extra["total_steps"],
        "ranks": (extra.get("distributed") or {}).get("nproc_per_node", 1),
        "seed": view.seed,
        **view.hyperparameters,
    }
    for key, value in sorted((extra["method_options"] or {}).items()):
        params[f"{extra['method']}.{key}"] = value
    return params


def _series(platform: Platform, job_id: str) -> list[MetricPoint]:
    rows = platform.jobs.events(job_id, limit=None)  # a resumed job repeats steps: the later wins
    points: dict[int, MetricPoint] = {}
    for row in rows:
        data = row.data or {}
        if data.get("type") == "metrics":
            points[int(data["step"])] = MetricPoint.model_validate(data)
    return [points[step] for step in sorted(points)]


def run_metrics(platform: Platform, job_id: str) -> RunMetrics:
    job = find_job(platform, job_id)
    view = job_view(job)
    series = _series(platform, job_id)
    result = job.result or {}
    valid = [p.valid_loss for p in series if p.valid_loss is not None]
    speeds = [p.tokens_per_second for p in series if p.tokens_per_second is not None]
    memory = [p.peak_memory_bytes for p in series if p.peak_memory_bytes is not None]
    finished = job.finished_at
    return RunMetrics(
        job_id=job.id,
        status=view.status,
        fine_tuned_model=result.get("fine_tuned_model"),
        registered_version=result.get("version_ref"),
        params=_params(view),
        # The final figures; a job's per-checkpoint suite scores are in its checkpoint_eval.
        final={
            key: value
            for key, value in (result.get("metrics") or {}).items()
            if not isinstance(value, list | dict)
        },
        best_valid_loss=min(valid) if valid else None,
        mean_tokens_per_second=round(sum(speeds) / len(speeds), 1) if speeds else None,
        peak_memory_bytes=max(memory) if memory else None,
        seconds=(finished - job.created_at).total_seconds() if finished else None,
        series=series,
    )


def compare_jobs(platform: Platform, job_ids: list[str]) -> RunComparison:
    """Fine-tuning jobs side by side: parameters (those that differ named) and final metrics.

    Not `evalhub.eval.compare_runs`, which pairs two eval runs case by case for statistics.
    """
    unique = list(dict.fromkeys(job_ids))
    if not 2 <= len(unique) <= MAX_COMPARED:
        raise invalid(f"compare 2 to {MAX_COMPARED} different fine-tuning jobs")
    runs = [RunSummary.model_validate(run_metrics(platform, job_id), from_attributes=True)
            for job_id in unique]  # fmt: skip
    keys = list(dict.fromkeys(key for run in runs for key in run.params))
    differing = [key for key in keys if len({repr(run.params.get(key)) for run in runs}) > 1]
    return RunComparison(runs=runs, differing_params=differing)
