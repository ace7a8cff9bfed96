"""The confidence sequence's coverage, simulated: it must hold at every look at once."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from monitors.sequential import confidence_sequence, slower_than_control_quantile

STREAMS = 200
LOOKS = 20
STEP = 25
Streams = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


def coverage(draw: Streams, truth: float, bounds: tuple[float, float] | None) -> float:
    """Share of simulated streams whose interval holds the truth at all of their looks."""
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(STREAMS):
        candidate, control = draw(rng)
        ratio = len(control) // len(candidate)
        covered += all(
            truth
            in confidence_sequence(
                candidate[: look * STEP],
                control[: look * STEP * ratio],
                tuning_n=LOOKS * STEP * (1 + ratio),
                bounds=bounds,
            )
            for look in range(1, LOOKS + 1)
        )
    return covered / STREAMS


def normal_streams(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(1.0, 2.0, LOOKS * STEP), rng.normal(0.5, 1.0, LOOKS * STEP)


def proportion_streams(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    candidate = rng.random(LOOKS * STEP) < 0.85
    control = rng.random(2 * LOOKS * STEP) < 0.9
    return candidate.astype(float), control.astype(float)


def rare_event_streams(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    candidate = rng.random(LOOKS * STEP) < 0.05
    control = rng.random(2 * LOOKS * STEP) < 0.02
    return candidate.astype(float), control.astype(float)


@pytest.mark.parametrize(
    ("draw", "truth", "bounds"),
    [
        (normal_streams, 0.5, None),
        (proportion_streams, -0.05, (0.0, 1.0)),
        (rare_event_streams, 0.03, (0.0, 1.0)),
    ],
    ids=["normal", "proportion", "rare-event"],
)
def test_the_sequence_covers_the_true_difference_at_every_look(
    draw: Streams, truth: float, bounds: tuple[float, float] | None
) -> None:
    covered = coverage(draw, truth, bounds)
    print(f"time-uniform coverage over {STREAMS} streams of {LOOKS} looks: {covered:.3f}")
    assert covered >= 0.93


def test_repeated_fixed_sample_intervals_would_not() -> None:
    """What the sequence is for: a 95% t-interval checked at 20 looks misses far more often."""
    rng = np.random.default_rng(0)
    missed = 0
    for _ in range(STREAMS):
        candidate, control = normal_streams(rng)
        for look in range(1, LOOKS + 1):
            a, b = candidate[: look * STEP], control[: look * STEP]
            half = 1.96 * np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
            if abs(a.mean() - b.mean() - 0.5) > half:
                missed += 1
                break
    assert missed / STREAMS > 0.10


def test_the_interval_narrows_and_centres_on_the_estimate() -> None:
    rng = np.random.default_rng(1)
    candidate, control = rng.normal(1, 1, 2000), rng.normal(0, 1, 2000)
    early = confidence_sequence(candidate[:100], control[:100])
    late = confidence_sequence(candidate, control)
    assert late.high - late.low < (early.high - early.low) / 3
    assert late.low < late.estimate < late.high
    assert late.estimate == pytest.approx(candidate.mean() - control.mean())
    assert (late.n_candidate, late.n_control) == (2000, 2000)


def test_no_event_yet_does_not_give_a_zero_width_interval() -> None:
    interval = confidence_sequence(np.zeros(30), np.zeros(60), bounds=(0.0, 1.0))
    assert interval.estimate == 0.0
    assert interval.high - interval.low > 0.05


def test_latency_is_compared_through_the_share_above_the_control_p95() -> None:
    control = np.arange(1.0, 101.0)
    slower, control_slower = slower_than_control_quantile(control + 10, control)
    assert control_slower.mean() == pytest.approx(0.05)
    assert slower.mean() == pytest.approx(0.15)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="candidate arm needs at least 2 values"):
        confidence_sequence([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="one-dimensional"):
        confidence_sequence(np.zeros((3, 2)), [1.0, 2.0])
    with pytest.raises(ValueError, match="alpha must be in"):
        confidence_sequence([1.0, 2.0], [1.0, 2.0], alpha=1.5)
