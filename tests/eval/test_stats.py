"""Statistical validity of the comparison: coverage, false alarms, and the tests' p-values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from evalhub.eval.compare import compare_metric
from evalhub.eval.stats import mcnemar_exact, paired_bootstrap_ci, paired_permutation_pvalue

TRIALS = 1_000
RESAMPLES = 1_000


def test_bootstrap_interval_covers_the_true_difference_about_95_percent() -> None:
    rng = np.random.default_rng(2024)
    true_difference = 0.3
    n = 200
    covered = 0
    for trial in range(TRIALS):
        # Paired data: a shared per-case difficulty plus independent noise for each model.
        difficulty = rng.normal(0, 1, n)
        baseline = difficulty + rng.normal(0, 0.5, n)
        candidate = difficulty + true_difference + rng.normal(0, 0.5, n)
        low, high = paired_bootstrap_ci(candidate - baseline, n_resamples=RESAMPLES, seed=trial)
        covered += low <= true_difference <= high
    assert 0.93 <= covered / TRIALS <= 0.97


def test_bootstrap_is_seeded_and_reproducible() -> None:
    diffs = np.random.default_rng(0).normal(0.1, 1, 300)
    assert paired_bootstrap_ci(diffs, seed=5) == paired_bootstrap_ci(diffs, seed=5)
    assert paired_bootstrap_ci(diffs, seed=5) != paired_bootstrap_ci(diffs, seed=6)
    assert paired_bootstrap_ci(np.zeros(10)) == (0.0, 0.0)


def test_false_alarm_rate_is_near_nominal_when_nothing_changed() -> None:
    rng = np.random.default_rng(7)
    n = 150
    binary_alarms = continuous_alarms = ci_excludes_zero = 0
    for trial in range(TRIALS):
        skill = rng.uniform(0.2, 0.9, n)
        baseline = (rng.random(n) < skill).astype(float)
        candidate = (rng.random(n) < skill).astype(float)
        binary_alarms += mcnemar_exact(baseline, candidate) < 0.05
        difficulty = rng.normal(0, 1, n)
        cont_base = difficulty + rng.normal(0, 0.5, n)
        cont_cand = difficulty + rng.normal(0, 0.5, n)
        diffs = cont_cand - cont_base
        continuous_alarms += (
            paired_permutation_pvalue(diffs, n_resamples=RESAMPLES, seed=trial) < 0.05
        )
        low, high = paired_bootstrap_ci(diffs, n_resamples=RESAMPLES, seed=trial)
        ci_excludes_zero += not low <= 0 <= high
    # The exact McNemar test is conservative (discrete), so at most nominal.
    assert 0.02 <= binary_alarms / TRIALS <= 0.065
    assert 0.03 <= continuous_alarms / TRIALS <= 0.07
    assert 0.03 <= ci_excludes_zero / TRIALS <= 0.07


def test_gate_rule_errs_at_the_nominal_rate_at_the_margin() -> None:
    """At a true drop exactly equal to the margin, the non-inferiority rule passes ~2.5%."""
    rng = np.random.default_rng(11)
    n, margin = 200, 0.1
    wrongly_passed = 0
    for trial in range(TRIALS):
        difficulty = rng.normal(0, 1, n)
        baseline = difficulty + rng.normal(0, 0.5, n)
        candidate = difficulty - margin + rng.normal(0, 0.5, n)
        low, _ = paired_bootstrap_ci(candidate - baseline, n_resamples=RESAMPLES, seed=trial)
        wrongly_passed += low >= -margin
    assert 0.01 <= wrongly_passed / TRIALS <= 0.045


def test_mcnemar_matches_a_binomial_test_on_discordant_pairs() -> None:
    baseline = np.array([1] * 30 + [0] * 10 + [1] * 50 + [0] * 10, dtype=float)
    candidate = np.array([0] * 30 + [1] * 10 + [1] * 50 + [0] * 10, dtype=float)
    assert mcnemar_exact(baseline, candidate) == pytest.approx(binomtest(10, 40, 0.5).pvalue)
    assert mcnemar_exact(baseline, baseline) == 1.0


def test_compare_metric_counts_and_picks_the_test() -> None:
    base = np.array([1, 0, 1, 1, 0], dtype=float)
    cand = np.array([1, 1, 0, 1, 1], dtype=float)
    result = compare_metric("em", base, cand, n_resamples=500)
    assert result.test == "mcnemar" and (result.wins, result.ties, result.losses) == (2, 2, 1)
    assert result.difference == pytest.approx(0.2)
    lower = compare_metric("latency", base + 1, cand + 1.5, higher_is_better=False)
    assert (
        lower.test == "permutation"
        and (lower.wins, lower.losses) == (1, 4)
        and lower.worst_improvement < 0
    )
