"""When to promote a candidate, keep watching it, or roll it back, from its traffic and the
control's.

Each guard metric is a per-request value whose mean the candidate may not make worse than the
control's by more than the guard's `margin` (a non-inferiority margin, in the metric's units). The
policy looks at the numbers whenever it is called and may stop at any look, so each guard's
uncertainty is an anytime-valid confidence sequence (`monitors.sequential`) for candidate minus
control. For a guard with lower values better, "worse" is above; the rules below read "worse" that
way.

- rollback, at any look, as soon as one guard's whole interval lies on the worse side of its
  margin: the candidate is worse than tolerated, with the confidence of the sequence. Give a
  metric where any proven harm must roll back a margin of 0.
- promote once the candidate has served `min_requests` and every guard's whole interval lies on
  the better side of its margin (non-inferior).
- hold otherwise; a hold that has lasted longer than `max_wait_seconds` is inconclusive, for a
  person to decide.

Each guard's verdict: "better" (the whole interval on the better side of 0), "non_inferior", "worse"
(beyond the margin), or "unknown" (the interval straddles the margin, or either arm has fewer than
`min_samples` values, too few for an asymptotic interval).

Guard metrics, per request: "error_rate" (1 when the status is >= 400 or an error is recorded,
lower better); "latency_p95" (1 when the request was slower than the control's p95, lower better:
the control's share is 5% by construction, and the margin is in share points, so 0.05 tolerates a
candidate slower than that p95 in 10% of its requests); an online metric's name (its score from the
scores frame, higher better by default); "feedback:<name>" (the feedback score, higher better by
default). "drift" is the caller's verdict on whether the candidate's traffic drifted from the
control's: drift comes from a one-off test without the sequence's guarantee over repeated looks,
so it blocks promotion (the rollout holds, then turns inconclusive) but never rolls back by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from monitors.sequential import METHOD, confidence_sequence, slower_than_control_quantile

if TYPE_CHECKING:  # pandas loads in 0.5 s: only the functions that use it import it
    import pandas as pd

Direction = Literal["higher_is_better", "lower_is_better"]
Action = Literal["promote", "hold", "inconclusive", "rollback"]
Verdict = Literal["better", "non_inferior", "worse", "unknown"]
Values = npt.NDArray[np.float64]

ERROR_RATE = "error_rate"
LATENCY_P95 = "latency_p95"
DRIFT = "drift"
FEEDBACK_PREFIX = "feedback:"
LOWER_IS_BETTER = frozenset({ERROR_RATE, LATENCY_P95})


@dataclass(frozen=True)
class GuardMetric:
    name: str
    """"error_rate", "latency_p95", "drift", an online metric's name, or "feedback:<name>"."""
    margin: float = 0.0
    """How much worse than the control the candidate may be, in the metric's units."""
    direction: Direction | None = None
    """None: lower is better for error_rate and latency_p95, higher for every other metric."""
    bounds: tuple[float, float] | None = (0.0, 1.0)
    """The range of the per-request values (evalhub's metrics score 0..1); None if unbounded."""

    def __post_init__(self) -> None:
        if not self.name or self.name == FEEDBACK_PREFIX:
            raise ValueError(f"a guard metric needs a name, got {self.name!r}")
        if self.margin < 0:
            raise ValueError(f"the margin of {self.name!r} must be >= 0, got {self.margin}")
        if self.bounds is not None and not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"the bounds of {self.name!r} must be (low, high), got {self.bounds}")

    @property
    def lower_is_better(self) -> bool:
        if self.direction is None:
            return self.name in LOWER_IS_BETTER
        return self.direction == "lower_is_better"


@dataclass(frozen=True)
class Analysis:
    guards: tuple[GuardMetric, ...]
    min_requests: int = 200
    """Candidate requests a step serves before it may be promoted."""
    alpha: float = 0.05
    max_wait_seconds: float = 3600.0
    tuning_n: int | None = None
    """Total observations (both arms) at which the intervals are tightest; None: 2 * min_requests."""
    min_samples: int = 20
    """Observations per arm before a guard's interval is trusted (it is asymptotic)."""

    def __post_init__(self) -> None:
        if not self.guards:
            raise ValueError("an analysis needs at least one guard metric")
        names = [guard.name for guard in self.guards]
        if len(set(names)) != len(names):
            raise ValueError(f"guard metrics are named more than once: {names}")
        if self.min_requests < 1 or self.min_samples < 2:
            raise ValueError("min_requests must be >= 1 and min_samples >= 2")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    @property
    def planned_n(self) -> int:
        return self.tuning_n or 2 * self.min_requests


@dataclass(frozen=True)
class MetricVerdict:
    name: str
    direction: Direction
    samples_candidate: int
    samples_control: int
    estimate: float | None
    """Candidate minus control; None when not measured."""
    low: float | None
    high: float | None
    bound: float
    """The margin as a limit on candidate minus control: -margin, or +margin if lower is better."""
    verdict: Verdict


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    method: str
    candidate_requests: int
    metrics: tuple[MetricVerdict, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    analysis: Analysis,
    candidate: pd.DataFrame,
    control: pd.DataFrame,
    *,
    step_started_at: datetime,
    now: datetime,
    scores: pd.DataFrame | None = None,
    feedback: pd.DataFrame | None = None,
    drift: bool | None = None,
) -> Decision:
    """The decision for a rollout step from the two arms' traffic frames (all their requests
    since the step started) and the scores and feedback on those requests."""
    samples = metric_samples(analysis, candidate, control, scores=scores, feedback=feedback)
    return decide_from_samples(
        analysis,
        samples,
        candidate_requests=len(candidate),
        step_started_at=step_started_at,
        now=now,
        drift=drift,
    )


def metric_samples(
    analysis: Analysis,
    candidate: pd.DataFrame,
    control: pd.DataFrame,
    *,
    scores: pd.DataFrame | None = None,
    feedback: pd.DataFrame | None = None,
) -> dict[str, tuple[Values, Values]]:
    """Each guard metric's per-request values, candidate's then control's."""
    for arm, frame in (("candidate", candidate), ("control", control)):
        missing = {"request_id", "status", "error", "latency_ms"} - set(frame.columns)
        if missing:
            raise ValueError(f"the {arm} traffic lacks the columns {sorted(missing)}")
    samples = {}
    for guard in analysis.guards:
        if guard.name == ERROR_RATE:
            samples[guard.name] = (_failed(candidate), _failed(control))
        elif guard.name == LATENCY_P95:
            samples[guard.name] = _slower(candidate, control)
        elif guard.name.startswith(FEEDBACK_PREFIX):
            name = guard.name.removeprefix(FEEDBACK_PREFIX)
            samples[guard.name] = _joined(feedback, "feedback", "name", name, candidate, control)
        elif guard.name != DRIFT:
            samples[guard.name] = _joined(
                scores, "scores", "metric", guard.name, candidate, control
            )
    return samples


def decide_from_samples(
    analysis: Analysis,
    samples: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    *,
    candidate_requests: int,
    step_started_at: datetime,
    now: datetime,
    drift: bool | None = None,
) -> Decision:
    """The decision from each guard metric's per-request values (see `metric_samples`)."""
    verdicts = [
        _drift_verdict(guard, drift)
        if guard.name == DRIFT
        else _verdict(guard, analysis, *_guard_samples(samples, guard.name))
        for guard in analysis.guards
    ]
    method = f"{METHOD}, alpha={analysis.alpha}, tuning_n={analysis.planned_n}"

    def decision(action: Action, reason: str) -> Decision:
        return Decision(action, reason, method, candidate_requests, tuple(verdicts))

    worse = [item.name for item in verdicts if item.verdict == "worse" and item.name != DRIFT]
    if worse:
        return decision("rollback", f"worse than the control beyond the margin: {', '.join(worse)}")
    pending = [item.name for item in verdicts if item.verdict not in ("better", "non_inferior")]
    if candidate_requests >= analysis.min_requests and not pending:
        return decision("promote", "every guard metric is non-inferior to the control")
    if candidate_requests < analysis.min_requests:
        reason = f"{candidate_requests} of {analysis.min_requests} candidate requests served"
    else:
        reason = f"not yet shown non-inferior: {', '.join(pending)}"
    waited = (now - step_started_at).total_seconds()
    if waited > analysis.max_wait_seconds:
        return decision("inconclusive", f"{reason} after {waited:.0f} s (max_wait exceeded)")
    return decision("hold", reason)


def _verdict(
    guard: GuardMetric, analysis: Analysis, candidate: Values, control: Values
) -> MetricVerdict:
    lower_is_better = guard.lower_is_better
    enough = min(len(candidate), len(control)) >= analysis.min_samples
    interval = (
        confidence_sequence(
            candidate,
            control,
            alpha=analysis.alpha,
            tuning_n=analysis.planned_n,
            bounds=guard.bounds,
        )
        if enough
        else None
    )
    verdict: Verdict = "unknown"
    if interval is not None:
        # A lower-better metric is flipped so that improvement reads upwards.
        sign = -1 if lower_is_better else 1
        low, high = sorted((sign * interval.low, sign * interval.high))
        if high < -guard.margin:
            verdict = "worse"
        elif low > 0:
            verdict = "better"
        elif low > -guard.margin:
            verdict = "non_inferior"
    return MetricVerdict(
        name=guard.name,
        direction="lower_is_better" if lower_is_better else "higher_is_better",
        samples_candidate=len(candidate),
        samples_control=len(control),
        estimate=None if interval is None else interval.estimate,
        low=None if interval is None else interval.low,
        high=None if interval is None else interval.high,
        bound=guard.margin if lower_is_better else -guard.margin,
        verdict=verdict,
    )


def _drift_verdict(guard: GuardMetric, drift: bool | None) -> MetricVerdict:
    verdicts: dict[bool | None, Verdict] = {None: "unknown", True: "worse", False: "non_inferior"}
    return MetricVerdict(
        name=guard.name,
        direction="lower_is_better",
        samples_candidate=0,
        samples_control=0,
        estimate=None,
        low=None,
        high=None,
        bound=0.0,
        verdict=verdicts[drift],
    )


def _guard_samples(
    samples: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]], name: str
) -> tuple[Values, Values]:
    if name not in samples:
        raise ValueError(f"no per-request values for the guard metric {name!r}")
    candidate, control = samples[name]
    return _clean(candidate), _clean(control)


def _clean(values: npt.ArrayLike) -> Values:
    array = np.asarray(values, dtype=float).ravel()
    present: Values = array[~np.isnan(array)]
    return present


def _failed(traffic: pd.DataFrame) -> Values:
    import pandas as pd

    failed = (pd.to_numeric(traffic["status"], errors="coerce") >= 400) | traffic["error"].notna()
    return np.asarray(failed, dtype=float)


def _slower(candidate: pd.DataFrame, control: pd.DataFrame) -> tuple[Values, Values]:
    candidate_latency = _clean(candidate["latency_ms"].to_numpy(dtype=float, na_value=np.nan))
    control_latency = _clean(control["latency_ms"].to_numpy(dtype=float, na_value=np.nan))
    if len(control_latency) == 0:
        return control_latency, control_latency  # no p95 to compare with: nothing to measure
    return slower_than_control_quantile(candidate_latency, control_latency)


def _joined(
    values: pd.DataFrame | None,
    frame_name: str,
    key: str,
    name: str,
    candidate: pd.DataFrame,
    control: pd.DataFrame,
) -> tuple[Values, Values]:
    """The named metric's score per request of each arm (the mean if scored twice)."""
    if values is None:
        raise ValueError(f"the guard metric {name!r} needs the {frame_name} frame")
    score_column = "score"
    missing = {"request_id", key, score_column} - set(values.columns)
    if missing:
        raise ValueError(f"the {frame_name} frame lacks the columns {sorted(missing)}")
    chosen = values[values[key] == name]
    per_request = chosen.groupby("request_id")[score_column].mean()
    candidate_scores, control_scores = (
        per_request.reindex(frame["request_id"]).dropna().to_numpy(dtype=float)
        for frame in (candidate, control)
    )
    return candidate_scores, control_scores
