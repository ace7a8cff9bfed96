"""Sentence scores per case and a corpus score as aggregate, both exactly sacrebleu's own."""

from __future__ import annotations

from typing import Any

from evalhub.eval.case import Case
from evalhub.eval.metrics._base import Metric, ScoringContext, references
from evalhub.eval.record import Aggregate, Score


def _reference_streams(cases: list[Case]) -> list[list[str | None]]:
    # sacrebleu takes one stream per reference position; None pads cases with fewer references.
    per_case = [references(case) for case in cases]
    width = max((len(refs) for refs in per_case), default=1)
    return [[refs[i] if i < len(refs) else None for refs in per_case] for i in range(width)]


def sacrebleu_metric(sentence_scorer: Any, corpus_scorer: Any) -> Metric:
    """`sentence_scorer` and `corpus_scorer` are sacrebleu metric objects, built once and reused."""

    def score(outputs: list[str], cases: list[Case], context: ScoringContext) -> list[Score]:
        scores = []
        for output, case in zip(outputs, cases, strict=True):
            result = sentence_scorer.sentence_score(output, references(case))
            scores.append(Score(value=result.score, explanation=str(result)))
        return scores

    def aggregate(
        scores: list[Score], outputs: list[str], cases: list[Case], context: ScoringContext
    ) -> Aggregate:
        if not outputs:
            return Aggregate(value=None, count=0)
        result = corpus_scorer.corpus_score(outputs, _reference_streams(cases))
        values = [score.value for score in scores if score.value is not None]
        details = {"sentence_mean": sum(values) / len(values)} if values else {}
        return Aggregate(value=result.score, count=len(outputs), details=details)

    return Metric(score, aggregate, scale=100.0)
