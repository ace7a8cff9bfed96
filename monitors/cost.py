"""What tokens cost: one formula for the gateway's traffic records, the cost metric and monitors.

Prices are per million tokens, per model: `{"bot": {"prompt": 0.15, "completion": 0.60}}`.
"""

from __future__ import annotations

from collections.abc import Mapping

Price = Mapping[str, float]
Prices = Mapping[str, Price]

PRICE_KEYS = frozenset({"prompt", "completion"})


def check_prices(prices: Prices) -> None:
    """Refuses a table with keys the formula would silently ignore."""
    for name, price in prices.items():
        if set(price) - PRICE_KEYS:
            raise ValueError(f"price of {name!r} takes only 'prompt' and 'completion' keys")


def price_for(prices: Prices, *names: str | None) -> Price | None:
    """The first of `names` (a version ref, then its model, ...) that the table prices."""
    for name in names:
        if name is not None and name in prices:
            return prices[name]
    return None


def token_cost(price: Price, prompt_tokens: int, completion_tokens: int) -> float:
    return (
        prompt_tokens * price.get("prompt", 0.0) + completion_tokens * price.get("completion", 0.0)
    ) / 1_000_000
