"""chrF via sacrebleu (word_order=2 gives chrF++): per case `sentence_chrf`, aggregate `corpus_chrf`."""

from __future__ import annotations

from evalhub.eval.metrics._base import Metric
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.metrics._sacrebleu import sacrebleu_metric


@register_metric("chrf")
def chrf(
    char_order: int = 6, word_order: int = 0, beta: int = 2, lowercase: bool = False
) -> Metric:
    from sacrebleu.metrics import CHRF

    scorer = CHRF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase)
    return sacrebleu_metric(scorer, scorer)
