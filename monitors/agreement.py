"""How far two sources of labels agree on the same items: raw agreement and Cohen's kappa, each
with a 95% interval.

Raw agreement is the share of pairs with the same label; Cohen's kappa corrects it for the
agreement two raters would reach by chance with their own label frequencies: 1 is perfect, 0 is
chance, below 0 is worse than chance. Labels are categories (a 1-5 scale counts each point as
its own category, so kappa here is unweighted).

An item may contribute several pairs (a judge against each of three humans), and those pairs are
not independent, so the intervals come from a bootstrap that resamples items, not pairs: each
resample draws items with replacement and sums their pair counts (multinomial item weights times
each item's contingency table). The interval is the 2.5th to 97.5th percentile of the resampled
values. Tested by simulation against raters of known joint label distribution.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

METHOD = "Cohen's kappa, 95% percentile bootstrap over items"
RESAMPLES = 2000


@dataclass(frozen=True)
class Pair:
    """One item labelled by both sides: `item` groups the pairs that share an item."""

    item: Hashable
    left: str
    right: str


@dataclass(frozen=True)
class Agreement:
    n: int  # pairs
    items: int
    raw: float
    raw_low: float
    raw_high: float
    kappa: float | None  # None when chance agreement is certain (both sides use one label)
    kappa_low: float | None
    kappa_high: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(pairs: Sequence[Pair], *, seed: int = 0, resamples: int = RESAMPLES) -> Agreement:
    if not pairs:
        raise ValueError("agreement needs at least one pair of labels")
    categories = sorted({p.left for p in pairs} | {p.right for p in pairs})
    index = {label: i for i, label in enumerate(categories)}
    items = list(dict.fromkeys(p.item for p in pairs))
    row = {item: i for i, item in enumerate(items)}
    k = len(categories)
    tables = np.zeros((len(items), k * k))
    for p in pairs:
        tables[row[p.item], index[p.left] * k + index[p.right]] += 1
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(items), np.full(len(items), 1 / len(items)), size=resamples)
    resampled = (weights @ tables).reshape(resamples, k, k)
    whole = tables.sum(axis=0).reshape(1, k, k)
    raw, kappa = _raw(whole)[0], _kappa(whole)[0]
    raw_low, raw_high = _percentiles(_raw(resampled))
    kappa_low, kappa_high = _percentiles(_kappa(resampled))
    defined = bool(np.isfinite(kappa))
    return Agreement(
        n=len(pairs),
        items=len(items),
        raw=float(raw),
        raw_low=raw_low,
        raw_high=raw_high,
        kappa=float(kappa) if defined else None,
        kappa_low=kappa_low if defined else None,
        kappa_high=kappa_high if defined else None,
    )


def _raw(tables: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    total = tables.sum(axis=(1, 2))
    result: npt.NDArray[np.float64] = np.trace(tables, axis1=1, axis2=2) / total
    return result


def _kappa(tables: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    total = tables.sum(axis=(1, 2))
    observed = np.trace(tables, axis1=1, axis2=2) / total
    chance = (tables.sum(axis=2) * tables.sum(axis=1)).sum(axis=1) / total**2
    with np.errstate(divide="ignore", invalid="ignore"):
        result: npt.NDArray[np.float64] = np.where(
            chance < 1 - 1e-12, (observed - chance) / (1 - chance), np.nan
        )
    return result


def _percentiles(values: npt.NDArray[np.float64]) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)
