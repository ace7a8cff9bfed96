"""Cost in currency units: prompt and completion tokens times a per-model price table.

Prices are per million tokens, e.g. {"gpt-x": {"prompt": 0.15, "completion": 0.60}}; the formula
is `monitors.cost`'s, the one the gateway's traffic records use.
"""

from __future__ import annotations

from evalhub.eval.case import Case
from evalhub.eval.metrics._base import Metric, ScoringContext
from evalhub.eval.metrics._records import aligned_records
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.record import Aggregate, Score
from monitors.cost import check_prices, price_for, token_cost


@register_metric("cost")
def cost(prices: dict[str, dict[str, float]], model: str | None = None) -> Metric:
    check_prices(prices)

    def score(outputs: list[str], cases: list[Case], context: ScoringContext) -> list[Score]:
        scores = []
        for record in aligned_records(outputs, context):
            if record is None:
                scores.append(Score(value=None, explanation="no generation record"))
                continue
            name = model or record.model or ""
            price = price_for(prices, name)
            if price is None:
                known = ", ".join(sorted(prices)) or "none"
                scores.append(Score(value=None, explanation=f"no price for {name!r} ({known})"))
                continue
            prompt_tokens = record.prompt_tokens or 0
            completion_tokens = record.completion_tokens or 0
            value = token_cost(price, prompt_tokens, completion_tokens)
            scores.append(
                Score(
                    value=value,
                    explanation=f"{prompt_tokens} prompt + {completion_tokens} completion tokens",
                    details={
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                    },
                )
            )
        return scores

    def aggregate(
        scores: list[Score], outputs: list[str], cases: list[Case], context: ScoringContext
    ) -> Aggregate:
        priced = [score for score in scores if score.value is not None]
        if not priced:
            return Aggregate(value=None, count=0)
        total = sum(score.value or 0.0 for score in priced)
        details = {
            "total": total,
            "prompt_tokens": float(sum(s.details["prompt_tokens"] for s in priced)),
            "completion_tokens": float(sum(s.details["completion_tokens"] for s in priced)),
        }
        return Aggregate(value=total / len(priced), count=len(priced), details=details)

    return Metric(score, aggregate, higher_is_better=False, scale=None)
