"""Latency from generation records: per call seconds; p50/p95/p99 and time to first token."""

from __future__ import annotations

import numpy as np

from evalhub.eval.case import Case
from evalhub.eval.metrics._base import Metric, ScoringContext
from evalhub.eval.metrics._records import aligned_records
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.record import Aggregate, Score

_PERCENTILES = {"p50": 50, "p95": 95, "p99": 99}
_STATISTICS = ["mean", *_PERCENTILES]


def _percentiles(values: list[float], prefix: str) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values, dtype=float)
    result = {f"{prefix}mean": float(array.mean())}
    for name, percent in _PERCENTILES.items():
        result[f"{prefix}{name}"] = float(np.percentile(array, percent))
    return result


@register_metric("latency")
def latency(statistic: str = "p50") -> Metric:
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(_STATISTICS)}")

    def score(outputs: list[str], cases: list[Case], context: ScoringContext) -> list[Score]:
        scores = []
        for record in aligned_records(outputs, context):
            if record is None or record.latency_s is None:
                scores.append(Score(value=None, explanation="no latency recorded"))
                continue
            ttft = f", first token {record.ttft_s:.3f}s" if record.ttft_s is not None else ""
            scores.append(
                Score(
                    value=record.latency_s,
                    explanation=f"{record.latency_s:.3f}s{ttft}",
                    details={"ttft_s": record.ttft_s} if record.ttft_s is not None else {},
                )
            )
        return scores

    def aggregate(
        scores: list[Score], outputs: list[str], cases: list[Case], context: ScoringContext
    ) -> Aggregate:
        values = [score.value for score in scores if score.value is not None]
        ttfts = [s.details["ttft_s"] for s in scores if s.details.get("ttft_s") is not None]
        details = {**_percentiles(values, ""), **_percentiles(ttfts, "ttft_")}
        return Aggregate(value=details.get(statistic), count=len(values), details=details)

    return Metric(score, aggregate, higher_is_better=False, scale=None)
