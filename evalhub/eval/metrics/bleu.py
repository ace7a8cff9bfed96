"""BLEU via sacrebleu: per case as `sacrebleu.sentence_bleu`, aggregate as `corpus_bleu`."""

from __future__ import annotations

from evalhub.eval.metrics._base import Metric
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.metrics._sacrebleu import sacrebleu_metric


@register_metric("bleu")
def bleu(
    tokenize: str | None = None, lowercase: bool = False, smooth_method: str = "exp"
) -> Metric:
    from sacrebleu.metrics import BLEU

    # sentence_bleu uses effective order; corpus_bleu does not: mirror both exactly.
    sentence = BLEU(
        tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method, effective_order=True
    )
    corpus = BLEU(tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method)
    return sacrebleu_metric(sentence, corpus)
