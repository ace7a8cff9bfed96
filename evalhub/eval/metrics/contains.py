"""The output contains the expected text (or each of several given strings)."""

from __future__ import annotations

from evalhub.eval.case import Case
from evalhub.eval.metrics._base import Metric, passed, per_case, references
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.metrics._text import Normaliser
from evalhub.eval.record import Score


@register_metric("contains")
def contains(
    values: list[str] | None = None, require: str = "all", ignore_case: bool = True
) -> Metric:
    if require not in ("all", "any"):
        raise ValueError("require must be 'all' or 'any'")
    normalise = Normaliser(ignore_case=ignore_case, collapse_whitespace=True)

    def score(output: str, case: Case) -> Score:
        wanted = values if values is not None else references(case)
        text = normalise(output)
        missing = [value for value in wanted if normalise(value) not in text]
        ok = not missing if require == "all" else len(missing) < len(wanted)
        return passed(ok, "found" if ok else f"missing: {', '.join(map(repr, missing))}")

    return Metric(per_case(score), binary=True)
