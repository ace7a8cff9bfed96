"""The run log: a versioned pydantic model holding everything a run produced.

`EvalRun.schema_version` names the layout; older layouts are migrated on load by `_migrate`,
so saved runs stay readable as the model grows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from evalhub.eval.suite import MetricSpec, SliceSpec
from evalhub.sampling import SamplingParams

SCHEMA_VERSION: Literal[1] = 1

RunStatus = Literal["running", "completed", "failed"]


def utc_now() -> datetime:
    return datetime.now(UTC)


class GenerationRecord(BaseModel):
    """One call to the target (or its cached answer)."""

    case_id: str
    repeat: int = 0
    key: str = ""
    output: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = Field(default=None, description="Time to first token when streamed.")
    finish_reason: str | None = None
    cached: bool = False
    model: str | None = None


class Score(BaseModel):
    """A metric's verdict on one case; `value` is None when it could not be scored."""

    value: float | None
    explanation: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class Aggregate(BaseModel):
    """A metric over many cases: its headline value, how many cases counted, and extras."""

    value: float | None
    count: int
    details: dict[str, float] = Field(default_factory=dict)


class CaseResult(BaseModel):
    case_id: str
    tags: list[str] = Field(default_factory=list)
    generations: list[GenerationRecord] = Field(default_factory=list)
    scores: dict[str, Score] = Field(default_factory=dict)

    @property
    def outputs(self) -> list[str]:
        return [generation.output for generation in self.generations]


class MetricSummary(BaseModel):
    spec: MetricSpec
    binary: bool = False
    higher_is_better: bool = True
    scale: float | None = 1.0
    aggregate: Aggregate
    passed: bool | None = Field(default=None, description="None when the metric has no threshold.")


class SliceSummary(BaseModel):
    spec: SliceSpec
    count: int
    metrics: dict[str, Aggregate] = Field(default_factory=dict)


class TargetInfo(BaseModel):
    """What was evaluated; never holds the API key."""

    base_url: str
    model: str
    cache_identity: str


class EvalRun(BaseModel):
    schema_version: Literal[1] = SCHEMA_VERSION
    run_id: str
    status: RunStatus = "running"
    error: str | None = None
    suite_name: str
    suite_version: str
    suite_digest: str
    dataset_ref: str
    dataset_digest: str
    target: TargetInfo
    sampling: SamplingParams
    repeats: int = 1
    started_at: datetime = Field(default_factory=utc_now)
    finished_at: datetime | None = None
    results: list[CaseResult] = Field(default_factory=list)
    metrics: dict[str, MetricSummary] = Field(default_factory=dict)
    slices: dict[str, SliceSummary] = Field(default_factory=dict)
    overall_score: float | None = None
    passed: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise ValueError(
                f"run log schema_version {version} is newer than this evalhub understands "
                f"({SCHEMA_VERSION}); upgrade evalhub to read it"
            )
        # Version 1 is the first layout; later versions add their upgrade steps here.
        return {**data, "schema_version": SCHEMA_VERSION}

    def result_by_case(self) -> dict[str, CaseResult]:
        return {result.case_id: result for result in self.results}

    def case_values(self, metric: str) -> dict[str, float]:
        """Per-case values of one metric, cases without a value left out."""
        values = {}
        for result in self.results:
            score = result.scores.get(metric)
            if score is not None and score.value is not None:
                values[result.case_id] = score.value
        return values
