"""The rollout policy, simulated against known truth at the level of the policy function."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from monitors.rollout import Analysis, GuardMetric, decide, decide_from_samples
from tests.monitors.synthetic import START, traffic

ROLLOUTS = 200
LOOKS = 20
STEP = 10  # candidate requests between looks
ANALYSIS = Analysis(
    guards=(GuardMetric("error_rate", margin=0.02), GuardMetric("json_valid", margin=0.05)),
    min_requests=100,
    max_wait_seconds=1e9,
)


def simulate(
    json_valid: float, *, control_json_valid: float = 0.9, seed: int = 0
) -> list[tuple[str, int]]:
    """Each rollout's final action and the candidate requests it had served by then; the control
    serves twice the candidate's traffic, as a canary's control usually serves more."""
    rng = np.random.default_rng(seed)
    n = LOOKS * STEP
    outcomes = []
    for _ in range(ROLLOUTS):
        candidate = {
            "error_rate": rng.random(n) < 0.02,
            "json_valid": rng.random(n) < json_valid,
        }
        control = {
            "error_rate": rng.random(2 * n) < 0.02,
            "json_valid": rng.random(2 * n) < control_json_valid,
        }
        outcome = ("hold", n)
        for served in range(STEP, n + 1, STEP):
            samples = {
                name: (candidate[name][:served], control[name][: 2 * served]) for name in candidate
            }
            decision = decide_from_samples(
                ANALYSIS, samples, candidate_requests=served, step_started_at=START, now=START
            )
            if decision.action != "hold":
                outcome = (decision.action, served)
                break
        outcomes.append(outcome)
    return outcomes


def share(outcomes: list[tuple[str, int]], action: str) -> float:
    return sum(outcome == action for outcome, _ in outcomes) / len(outcomes)


def test_an_a_a_rollout_is_rarely_rolled_back() -> None:
    outcomes = simulate(json_valid=0.9)
    wrong_rollbacks = share(outcomes, "rollback")
    print(
        f"A/A: wrong rollbacks {wrong_rollbacks:.3f}, promotions {share(outcomes, 'promote'):.3f}"
    )
    assert wrong_rollbacks <= 0.05


def test_a_candidate_30_points_worse_is_rolled_back_within_200_requests() -> None:
    outcomes = simulate(json_valid=0.6)
    power = share(outcomes, "rollback")
    served = np.mean([served for action, served in outcomes if action == "rollback"])
    print(f"json validity 0.6 vs 0.9: rolled back in {power:.3f}, after {served:.0f} requests")
    assert power >= 0.95


def test_a_candidate_worse_than_the_margin_is_rarely_promoted() -> None:
    outcomes = simulate(json_valid=0.8)
    wrong_promotions = share(outcomes, "promote")
    print(f"json validity 0.8 vs 0.9 (margin 0.05): wrong promotions {wrong_promotions:.3f}")
    assert wrong_promotions <= 0.05


def scores_for(frame: pd.DataFrame, rng: np.random.Generator, valid: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": frame["request_id"],
            "metric": "json_valid",
            "score": (rng.random(len(frame)) < valid).astype(float),
        }
    )


def arms(seed: int, candidate_n: int, **candidate: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    return (
        traffic(rng, candidate_n, arm="canary", version="bot/3", **candidate),
        traffic(rng, 4 * candidate_n),
    )


FULL = Analysis(
    guards=(
        GuardMetric("error_rate", margin=0.03),
        GuardMetric("latency_p95", margin=0.05),
        GuardMetric("json_valid", margin=0.1),
        GuardMetric("feedback:thumbs", margin=0.2),
    ),
    min_requests=300,
    max_wait_seconds=600,
)


def test_a_good_candidate_is_promoted_from_its_frames() -> None:
    rng = np.random.default_rng(5)
    candidate, control = arms(5, 1500, error_rate=0.0)
    scores = pd.concat([scores_for(candidate, rng, 0.95), scores_for(control, rng, 0.9)])
    rated = pd.concat([candidate.sample(300, random_state=0), control.sample(1200, random_state=0)])
    feedback = pd.DataFrame({"request_id": rated["request_id"], "name": "thumbs", "score": 1.0})
    decision = decide(
        FULL,
        candidate,
        control,
        scores=scores,
        feedback=feedback,
        step_started_at=START,
        now=START + timedelta(seconds=60),
    )
    assert decision.action == "promote", decision.reason
    verdicts = {metric.name: metric for metric in decision.metrics}
    assert verdicts["error_rate"].verdict == "better"
    assert verdicts["latency_p95"].bound == 0.05 and verdicts["json_valid"].bound == -0.1
    assert verdicts["feedback:thumbs"].samples_candidate == 300
    assert "confidence sequence" in decision.method
    assert json.loads(json.dumps(decision.to_dict()))["action"] == "promote"


def test_slow_or_failing_candidates_are_rolled_back_with_the_reason() -> None:
    candidate, control = arms(1, 300, latency_ms=800)
    decision = decide(
        Analysis(guards=(GuardMetric("latency_p95", margin=0.05),)),
        candidate,
        control,
        step_started_at=START,
        now=START,
    )
    assert decision.action == "rollback" and "latency_p95" in decision.reason
    candidate, control = arms(2, 100, error_rate=0.5)
    decision = decide(
        Analysis(guards=(GuardMetric("error_rate", margin=0.02),)),
        candidate,
        control,
        step_started_at=START,
        now=START,
    )
    assert decision.action == "rollback" and "error_rate" in decision.reason
    assert decision.metrics[0].verdict == "worse" and (decision.metrics[0].low or 0) > 0.02


def test_a_step_that_cannot_decide_holds_then_turns_inconclusive() -> None:
    candidate, control = arms(3, 50)
    analysis = Analysis(guards=(GuardMetric("error_rate", margin=0.02),), max_wait_seconds=600)
    early = decide(analysis, candidate, control, step_started_at=START, now=START)
    assert early.action == "hold" and "50 of 200 candidate requests" in early.reason
    late = decide(
        analysis, candidate, control, step_started_at=START, now=START + timedelta(hours=1)
    )
    assert late.action == "inconclusive" and "max_wait" in late.reason


def test_drift_blocks_promotion_but_does_not_roll_back() -> None:
    analysis = Analysis(
        guards=(GuardMetric("error_rate", margin=0.5), GuardMetric("drift")), min_requests=50
    )
    samples = {"error_rate": (np.zeros(100), np.zeros(100))}
    for drift, action, verdict in [
        (True, "hold", "worse"),
        (None, "hold", "unknown"),
        (False, "promote", "non_inferior"),
    ]:
        decision = decide_from_samples(
            analysis, samples, candidate_requests=100, step_started_at=START, now=START, drift=drift
        )
        assert (decision.action, decision.metrics[1].verdict) == (action, verdict)


def test_too_few_samples_give_no_verdict() -> None:
    analysis = Analysis(guards=(GuardMetric("error_rate"),), min_samples=20)
    decision = decide_from_samples(
        analysis,
        {"error_rate": (np.ones(10), np.zeros(100))},
        candidate_requests=10,
        step_started_at=START,
        now=START,
    )
    assert decision.action == "hold"
    assert decision.metrics[0].verdict == "unknown" and decision.metrics[0].estimate is None


def test_bad_input_is_refused() -> None:
    candidate, control = arms(0, 30)
    with pytest.raises(ValueError, match="needs the scores frame"):
        decide(
            Analysis(guards=(GuardMetric("json_valid"),)),
            candidate,
            control,
            step_started_at=START,
            now=START,
        )
    with pytest.raises(ValueError, match=r"lacks the columns \['latency_ms'\]"):
        decide(
            ANALYSIS,
            candidate.drop(columns=["latency_ms"]),
            control,
            step_started_at=START,
            now=START,
        )
    with pytest.raises(ValueError, match="no per-request values for the guard metric 'error_rate'"):
        decide_from_samples(ANALYSIS, {}, candidate_requests=0, step_started_at=START, now=START)
    with pytest.raises(ValueError, match="at least one guard"):
        Analysis(guards=())
    with pytest.raises(ValueError, match="named more than once"):
        Analysis(guards=(GuardMetric("error_rate"), GuardMetric("error_rate")))
    with pytest.raises(ValueError, match="margin of 'error_rate' must be >= 0"):
        GuardMetric("error_rate", margin=-0.1)
