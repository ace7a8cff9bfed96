"""Agreement's numbers against hand-worked tables, and its intervals' coverage, simulated with
raters of a known joint label distribution."""

from __future__ import annotations

import numpy as np
import pytest

from monitors.agreement import Pair, agreement

SIMULATIONS = 400


def pairs_from(table: dict[tuple[str, str], int]) -> list[Pair]:
    pairs = []
    for (left, right), count in table.items():
        pairs += [Pair(item=len(pairs) + i, left=left, right=right) for i in range(count)]
    return pairs


def test_kappa_and_raw_agreement_match_a_worked_example() -> None:
    # The textbook table: 20 yes-yes, 5 yes-no, 10 no-yes, 15 no-no out of 50.
    # Observed 0.7; chance 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4.
    result = agreement(
        pairs_from({("yes", "yes"): 20, ("yes", "no"): 5, ("no", "yes"): 10, ("no", "no"): 15})
    )
    assert (result.n, result.items) == (50, 50)
    assert result.raw == pytest.approx(0.7)
    assert result.kappa == pytest.approx(0.4)
    assert result.kappa_low is not None and result.kappa_high is not None
    assert result.kappa_low < 0.4 < result.kappa_high
    assert result.raw_low < 0.7 < result.raw_high


def test_perfect_agreement_is_one_and_one_label_leaves_kappa_undefined() -> None:
    perfect = agreement(pairs_from({("1", "1"): 5, ("2", "2"): 5, ("3", "3"): 5}))
    assert perfect.kappa == pytest.approx(1.0) and perfect.raw == 1.0
    single = agreement(pairs_from({("good", "good"): 8}))
    assert single.raw == 1.0 and single.kappa is None and single.kappa_low is None


def test_pairs_of_one_item_are_resampled_together() -> None:
    # A judge against three humans on each of 10 items: 30 pairs, 10 items.
    pairs = [
        Pair(item=i, left="good" if i % 2 else "bad", right=human)
        for i in range(10)
        for human in (["good", "good", "bad"] if i % 2 else ["bad", "bad", "good"])
    ]
    result = agreement(pairs)
    assert (result.n, result.items) == (30, 10)
    assert result.raw == pytest.approx(20 / 30)


def test_no_pairs_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one pair"):
        agreement([])


def population(joint: np.ndarray) -> tuple[float, float]:
    observed = float(np.trace(joint))
    chance = float((joint.sum(axis=1) * joint.sum(axis=0)).sum())
    return observed, (observed - chance) / (1 - chance)


@pytest.mark.parametrize(
    ("joint", "n"),
    [
        # Two labels, unbalanced, kappa 0.5 or so.
        (np.array([[0.55, 0.10], [0.08, 0.27]]), 100),
        # A 1-5 scale where raters mostly agree or miss by one point.
        (
            np.array(
                [
                    [0.06, 0.02, 0.00, 0.00, 0.00],
                    [0.02, 0.12, 0.04, 0.01, 0.00],
                    [0.00, 0.04, 0.20, 0.05, 0.01],
                    [0.00, 0.01, 0.05, 0.18, 0.04],
                    [0.00, 0.00, 0.01, 0.04, 0.10],
                ]
            ),
            150,
        ),
    ],
)
def test_intervals_cover_the_truth_about_95_percent_of_the_time(joint: np.ndarray, n: int) -> None:
    joint = joint / joint.sum()
    true_raw, true_kappa = population(joint)
    k = joint.shape[0]
    rng = np.random.default_rng(7)
    raw_hits = kappa_hits = 0
    for simulation in range(SIMULATIONS):
        cells = rng.choice(k * k, size=n, p=joint.ravel())
        pairs = [Pair(item=i, left=str(c // k), right=str(c % k)) for i, c in enumerate(cells)]
        result = agreement(pairs, seed=simulation, resamples=1000)
        raw_hits += result.raw_low <= true_raw <= result.raw_high
        assert result.kappa_low is not None and result.kappa_high is not None
        kappa_hits += result.kappa_low <= true_kappa <= result.kappa_high
    # 400 simulations: a true 95% coverage lands in [0.92, 0.975] with probability > 0.99.
    assert 0.92 <= raw_hits / SIMULATIONS <= 0.975
    assert 0.92 <= kappa_hits / SIMULATIONS <= 0.975
