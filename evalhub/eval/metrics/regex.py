"""The output matches a regular expression (the option, else the case's expected text)."""

from __future__ import annotations

from evalhub.eval.case import Case
from evalhub.eval.metrics._base import Metric, passed, per_case
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.metrics._text import compile_pattern
from evalhub.eval.record import Score


@register_metric("regex")
def regex(
    pattern: str | None = None, full_match: bool = False, ignore_case: bool = False
) -> Metric:
    compiled = compile_pattern(pattern, ignore_case) if pattern is not None else None

    def score(output: str, case: Case) -> Score:
        current = compiled or compile_pattern(case.expected_text, ignore_case)
        match = current.fullmatch(output) if full_match else current.search(output)
        if match is None:
            return passed(False, f"no match for {current.pattern!r}")
        return passed(True, f"matched {match.group(0)[:80]!r}")

    return Metric(per_case(score), binary=True)
