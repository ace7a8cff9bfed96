"""Anytime-valid confidence sequences for candidate minus control, so a rollout may look at its
numbers after every batch of requests and stop whenever they are clear.

A fixed-sample confidence interval, checked again and again as traffic comes in, is bound to
exclude the truth at some look: with 20 looks a 95% interval misses far more often than 5% of the
time. A confidence sequence covers the truth at every look at once, with probability 1 - alpha.

This is the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas,
"Time-uniform central limit theory and asymptotic confidence sequences" (Annals of Statistics,
2024), the one GrowthBook uses for sequential testing. At n = n_candidate + n_control observations,
with the difference of means d and its estimated variance v = s_candidate^2 / n_candidate +
s_control^2 / n_control, the interval is d +- sqrt(v * 2 (n rho^2 + 1) / (n rho^2) *
log(sqrt(n rho^2 + 1) / alpha)), where rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / tuning_n
makes it tightest when n reaches `tuning_n`. Its guarantee is asymptotic, like the t-interval's:
it needs a few dozen observations per arm before it can be trusted. For data of a known range
(`bounds`), each arm's variance is estimated with two pseudo-observations added at the ends of the
range (Laplace's rule for 0/1 data), so a small sample of a rare event, no error yet, does not get
a zero-width interval; the pseudo-observations' weight vanishes as data come in.

The same formula serves proportions (0/1 data). For a p95 latency, which is not a mean, compare the
shares of requests slower than the control's p95 (`slower_than_control_quantile`): that share is
5% for the control by construction, and a candidate whose p95 is higher has a higher share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

METHOD = "asymptotic confidence sequence (Waudby-Smith et al. 2024)"


@dataclass(frozen=True)
class Interval:
    """A confidence sequence's interval at one look, for mean(candidate) - mean(control)."""

    estimate: float
    low: float
    high: float
    n_candidate: int
    n_control: int

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confidence_sequence(
    candidate: npt.ArrayLike,
    control: npt.ArrayLike,
    *,
    alpha: float = 0.05,
    tuning_n: int = 1000,
    bounds: tuple[float, float] | None = None,
) -> Interval:
    """The interval, at this look, of a (1 - alpha) confidence sequence for the difference of
    means; `tuning_n` is the planned total number of observations (both arms), `bounds` the range
    of the values when it is known (0 and 1 for proportions)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if tuning_n < 1:
        raise ValueError(f"tuning_n must be a positive number of observations, got {tuning_n}")
    candidate_values, control_values = _values(candidate, "candidate"), _values(control, "control")
    n_candidate, n_control = len(candidate_values), len(control_values)
    estimate = float(candidate_values.mean() - control_values.mean())
    variance = (
        _variance(candidate_values, bounds) / n_candidate
        + _variance(control_values, bounds) / n_control
    )
    n = n_candidate + n_control
    rho_squared = (-2 * np.log(alpha) + np.log(-2 * np.log(alpha) + 1)) / tuning_n
    scale = n * rho_squared
    half_width = float(
        np.sqrt(variance * 2 * (scale + 1) / scale * np.log(np.sqrt(scale + 1) / alpha))
    )
    return Interval(
        estimate=estimate,
        low=estimate - half_width,
        high=estimate + half_width,
        n_candidate=n_candidate,
        n_control=n_control,
    )


def slower_than_control_quantile(
    candidate: npt.ArrayLike, control: npt.ArrayLike, quantile: float = 0.95
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per request, 1.0 when it took longer than the control's `quantile` latency, for each arm:
    the 0/1 data on which a confidence sequence guards a latency percentile."""
    candidate_values = _values(candidate, "candidate", minimum=0)
    control_values = _values(control, "control", minimum=1)
    limit = np.quantile(control_values, quantile)
    return (candidate_values > limit).astype(float), (control_values > limit).astype(float)


def _variance(values: npt.NDArray[np.float64], bounds: tuple[float, float] | None) -> float:
    if bounds is None:
        return float(values.var(ddof=1))
    return float(np.concatenate([values, bounds]).var())


def _values(values: npt.ArrayLike, arm: str, minimum: int = 2) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"the {arm} values must be one-dimensional, got shape {array.shape}")
    present: npt.NDArray[np.float64] = array[~np.isnan(array)]
    if len(present) < minimum:
        raise ValueError(f"the {arm} arm needs at least {minimum} values, got {len(present)}")
    return present
