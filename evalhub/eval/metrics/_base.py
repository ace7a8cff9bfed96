"""What a metric is: a batched scorer plus an aggregate, with the facts comparisons need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from evalhub.eval.case import Case
from evalhub.eval.record import Aggregate, GenerationRecord, Score


@dataclass
class ScoringContext:
    """What some metrics need beyond outputs and cases.

    `records` is aligned with the outputs (latency, cost); `baseline_outputs` maps case id to the
    baseline's answer (pairwise judging).
    """

    records: list[GenerationRecord] | None = None
    baseline_outputs: dict[str, str] = field(default_factory=dict)


BatchScorer = Callable[[list[str], list[Case], ScoringContext], list[Score]]
Aggregator = Callable[[list[Score], list[str], list[Case], ScoringContext], Aggregate]


class MetricError(ValueError):
    """A metric that cannot be built: unknown name, bad options, or a bad custom metric."""


def mean_aggregate(
    scores: list[Score], outputs: list[str], cases: list[Case], context: ScoringContext
) -> Aggregate:
    values = [score.value for score in scores if score.value is not None]
    return Aggregate(value=sum(values) / len(values) if values else None, count=len(values))


@dataclass
class Metric:
    """A built metric. `binary` metrics score 0 or 1 (paired tests use McNemar); `scale` is the
    best possible value, used to weigh metrics into one overall score (None: not weighed)."""

    scorer: BatchScorer
    aggregator: Aggregator = mean_aggregate
    binary: bool = False
    higher_is_better: bool = True
    scale: float | None = 1.0
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def score(
        self, outputs: list[str], cases: list[Case], context: ScoringContext | None = None
    ) -> list[Score]:
        if len(outputs) != len(cases):
            raise ValueError(f"{len(outputs)} outputs for {len(cases)} cases")
        scores = self.scorer(outputs, cases, context or ScoringContext())
        if len(scores) != len(outputs):
            raise ValueError(
                f"metric {self.name!r} returned {len(scores)} scores for {len(outputs)}"
            )
        return scores

    def aggregate(
        self,
        scores: list[Score],
        outputs: list[str],
        cases: list[Case],
        context: ScoringContext | None = None,
    ) -> Aggregate:
        return self.aggregator(scores, outputs, cases, context or ScoringContext())


def per_case(function: Callable[[str, Case], Score]) -> BatchScorer:
    """A batch scorer from a per-case function, for metrics with no batching to gain."""

    def scorer(outputs: list[str], cases: list[Case], context: ScoringContext) -> list[Score]:
        return [function(output, case) for output, case in zip(outputs, cases, strict=True)]

    return scorer


def passed(ok: bool, explanation: str = "", **details: Any) -> Score:
    return Score(value=1.0 if ok else 0.0, explanation=explanation, details=details)


def references(case: Case) -> list[str]:
    """The expected answer as a list of reference strings (several references allowed)."""
    if isinstance(case.expected, list) and all(isinstance(item, str) for item in case.expected):
        return list(case.expected)
    return [case.expected_text]
