"""The output parses as JSON."""

from __future__ import annotations

from evalhub.eval.case import Case
from evalhub.eval.metrics._base import Metric, passed, per_case
from evalhub.eval.metrics._json import parse_json
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.record import Score


@register_metric("json_valid")
def json_valid(strip_fence: bool = True) -> Metric:
    def score(output: str, case: Case) -> Score:
        _, error = parse_json(output, strip_fence)
        return passed(error is None, error or "valid JSON")

    return Metric(per_case(score), binary=True)
