"""The one token-cost formula, as the gateway and the cost metric use it."""

from __future__ import annotations

import pytest

from monitors.cost import check_prices, price_for, token_cost

PRICES = {"bot/2": {"prompt": 2.0, "completion": 10.0}, "bot": {"prompt": 1.0}}


def test_the_first_priced_name_wins_and_costs_are_per_million_tokens() -> None:
    assert price_for(PRICES, "bot/2", "bot") == {"prompt": 2.0, "completion": 10.0}
    assert price_for(PRICES, "bot/3", "bot") == {"prompt": 1.0}
    assert price_for(PRICES, None, "other") is None
    assert token_cost(PRICES["bot/2"], 1_000, 500) == pytest.approx(0.007)
    assert token_cost(PRICES["bot"], 1_000_000, 1_000_000) == pytest.approx(1.0)


def test_a_price_key_the_formula_would_ignore_is_refused() -> None:
    with pytest.raises(ValueError, match="only 'prompt' and 'completion'"):
        check_prices({"bot": {"input": 1.0}})
