"""Metrics, one module each, registered by name; `create_metric` builds any of them."""

from __future__ import annotations

from evalhub.eval.metric_policy import LOCAL, MetricPolicy
from evalhub.eval.metrics import (  # noqa: F401  (imported to register the built-in metrics)
    bleu,
    chrf,
    contains,
    cost,
    exact_match,
    json_schema,
    json_valid,
    latency,
    llm_judge,
    regex,
    required_sections,
    rouge,
    semantic_similarity,
)
from evalhub.eval.metrics._base import (
    Metric,
    MetricError,
    ScoringContext,
    mean_aggregate,
    passed,
    per_case,
    references,
)
from evalhub.eval.metrics._registry import (
    ENTRY_POINT_GROUP,
    create_metric,
    known_metrics,
    register_metric,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "LOCAL",
    "Metric",
    "MetricError",
    "MetricPolicy",
    "ScoringContext",
    "create_metric",
    "known_metrics",
    "mean_aggregate",
    "passed",
    "per_case",
    "references",
    "register_metric",
]
