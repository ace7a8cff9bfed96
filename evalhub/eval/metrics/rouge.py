"""ROUGE-1, ROUGE-2 and ROUGE-L via rouge-score; per case its F-measure (or P/R), mean as aggregate."""

from __future__ import annotations

from evalhub.eval.case import Case
from evalhub.eval.metrics._base import Metric, ScoringContext, references
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.record import Score

_MEASURES = ("fmeasure", "precision", "recall")


def _rouge(rouge_type: str, use_stemmer: bool, measure: str) -> Metric:
    from rouge_score.rouge_scorer import RougeScorer

    if measure not in _MEASURES:
        raise ValueError(f"measure must be one of {', '.join(_MEASURES)}")
    scorer = RougeScorer([rouge_type], use_stemmer=use_stemmer)

    def score(outputs: list[str], cases: list[Case], context: ScoringContext) -> list[Score]:
        scores = []
        for output, case in zip(outputs, cases, strict=True):
            refs = references(case)
            # rouge-score's signature is (target, prediction); several targets: best match.
            result = (
                scorer.score(refs[0], output)
                if len(refs) == 1
                else scorer.score_multi(refs, output)
            )[rouge_type]
            scores.append(
                Score(
                    value=getattr(result, measure),
                    explanation=f"P={result.precision:.4f} R={result.recall:.4f} "
                    f"F={result.fmeasure:.4f}",
                )
            )
        return scores

    return Metric(score)


@register_metric("rouge1")
def rouge1(use_stemmer: bool = False, measure: str = "fmeasure") -> Metric:
    return _rouge("rouge1", use_stemmer, measure)


@register_metric("rouge2")
def rouge2(use_stemmer: bool = False, measure: str = "fmeasure") -> Metric:
    return _rouge("rouge2", use_stemmer, measure)


@register_metric("rougeL")
def rouge_l(use_stemmer: bool = False, measure: str = "fmeasure") -> Metric:
    return _rouge("rougeL", use_stemmer, measure)
