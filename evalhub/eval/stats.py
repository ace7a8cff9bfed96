"""Paired statistics for comparing two runs on the same cases; seeded and vectorised."""

from __future__ import annotations

import numpy as np

# Resample matrices are built in chunks so memory stays near CHUNK_ELEMENTS floats.
CHUNK_ELEMENTS = 4_000_000


def _chunks(n_resamples: int, n: int) -> list[int]:
    per_chunk = max(1, CHUNK_ELEMENTS // max(n, 1))
    sizes = [per_chunk] * (n_resamples // per_chunk)
    if n_resamples % per_chunk:
        sizes.append(n_resamples % per_chunk)
    return sizes


def paired_bootstrap_ci(
    differences: np.ndarray | list[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean paired difference (resampling cases)."""
    diffs = np.asarray(differences, dtype=float)
    n = diffs.size
    if n == 0:
        return float("nan"), float("nan")
    if np.all(diffs == diffs[0]):
        return float(diffs[0]), float(diffs[0])
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [diffs[rng.integers(0, n, size=(size, n))].mean(axis=1) for size in _chunks(n_resamples, n)]
    )
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def mcnemar_exact(baseline: np.ndarray | list[float], candidate: np.ndarray | list[float]) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes (a binomial test on discordant pairs)."""
    from scipy.stats import binomtest

    base = np.asarray(baseline) >= 0.5
    cand = np.asarray(candidate) >= 0.5
    only_baseline = int(np.sum(base & ~cand))
    only_candidate = int(np.sum(~base & cand))
    discordant = only_baseline + only_candidate
    if discordant == 0:
        return 1.0
    return float(binomtest(only_candidate, discordant, 0.5).pvalue)


def paired_permutation_pvalue(
    differences: np.ndarray | list[float], *, n_resamples: int = 10_000, seed: int = 0
) -> float:
    """Two-sided sign-flip permutation p-value for a zero mean paired difference."""
    diffs = np.asarray(differences, dtype=float)
    n = diffs.size
    if n == 0 or np.all(diffs == 0):
        return 1.0
    observed = abs(diffs.mean())
    rng = np.random.default_rng(seed)
    extreme = 0
    for size in _chunks(n_resamples, n):
        signs = rng.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1
        means = np.abs((signs * diffs).mean(axis=1))
        extreme += int(np.sum(means >= observed - 1e-12))
    return (extreme + 1) / (n_resamples + 1)


def is_binary(values: np.ndarray | list[float]) -> bool:
    array = np.asarray(values, dtype=float)
    return bool(np.all((array == 0) | (array == 1)))
