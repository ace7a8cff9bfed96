"""Exact match after normalisation, optionally of an answer extracted from the output."""

from __future__ import annotations

from evalhub.eval.case import Case
from evalhub.eval.metrics._base import Metric, passed, per_case, references
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.metrics._text import Normaliser, compile_pattern, extract
from evalhub.eval.record import Score


@register_metric("exact_match")
def exact_match(
    ignore_case: bool = True,
    collapse_whitespace: bool = True,
    strip_punctuation: bool = False,
    extract_pattern: str | None = None,
) -> Metric:
    normalise = Normaliser(ignore_case, collapse_whitespace, strip_punctuation)
    pattern = compile_pattern(extract_pattern) if extract_pattern else None

    def score(output: str, case: Case) -> Score:
        answer = output
        if pattern is not None:
            found = extract(pattern, output)
            if found is None:
                return passed(False, f"extraction pattern {pattern.pattern!r} found nothing")
            answer = found
        wanted = [normalise(reference) for reference in references(case)]
        got = normalise(answer)
        if got in wanted:
            return passed(True, "match")
        return passed(False, f"{got!r} != {wanted[0]!r}", answer=got)

    return Metric(per_case(score), binary=True)
