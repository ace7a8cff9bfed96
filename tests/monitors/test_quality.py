"""Quality aggregates on a small hand-made frame whose answers are known."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from monitors.quality import ScoreSummary, cost_per_day, quality


def hand_made() -> pd.DataFrame:
    """Ten requests of canary bot/3, latencies 10..100 ms, one 500 and one error; two of the
    stable arm, one the next day."""
    rows = [
        {
            "request_id": f"c{index}",
            "created_at": datetime(2026, 12, 1, 10, 5 * index, tzinfo=UTC),
            "deployment": "support",
            "arm": "canary",
            "version": "bot/3",
            "status": 500 if index == 3 else 200,
            "error": "timeout" if index == 7 else None,
            "latency_ms": 10.0 * (index + 1),
            "ttft_ms": float(index + 1),
            "prompt_tokens": 10,
            "completion_tokens": None if index == 3 else 20,
            "cost": 0.5,
        }
        for index in range(10)
    ]
    rows += [
        {
            "request_id": f"s{index}",
            "created_at": datetime(2026, 12, 1 + index, 23, 0, tzinfo=UTC),
            "deployment": "support",
            "arm": None,
            "version": "bot/2",
            "status": 200,
            "error": None,
            "latency_ms": 5.0,
            "ttft_ms": None,
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "cost": None,
        }
        for index in range(2)
    ]
    return pd.DataFrame(rows)


SCORES = pd.DataFrame(
    {
        "request_id": ["c0", "c1", "c2", "c3", "s0"],
        "metric": ["json_valid", "json_valid", "json_valid", "length", "json_valid"],
        "score": [1.0, 0.0, 1.0, 120.0, 1.0],
    }
)
FEEDBACK = pd.DataFrame(
    {
        "request_id": ["c0", "c0", "c5", "s1"],
        "name": ["thumbs", "stars", "thumbs", "thumbs"],
        "score": [1.0, 4.0, 0.0, 1.0],
    }
)


def test_each_group_gets_its_counts_rates_and_percentiles() -> None:
    canary, stable = quality(hand_made(), SCORES, FEEDBACK)
    assert (canary.arm, canary.version, canary.bucket) == ("canary", "bot/3", None)
    assert (canary.requests, canary.errors, canary.error_rate) == (10, 2, 0.2)
    latencies = np.arange(10.0, 101.0, 10.0)
    assert canary.latency_p50_ms == pytest.approx(55.0)
    assert canary.latency_p95_ms == pytest.approx(95.5)
    assert canary.latency_p99_ms == pytest.approx(np.quantile(latencies, 0.99))
    assert canary.ttft_p50_ms == pytest.approx(5.5)
    assert (canary.prompt_tokens, canary.completion_tokens) == (100, 180)
    assert canary.completion_tokens_mean == pytest.approx(20.0)
    assert canary.cost == pytest.approx(5.0)
    assert canary.metrics == {
        "json_valid": ScoreSummary(mean=2 / 3, count=3),
        "length": ScoreSummary(mean=120.0, count=1),
    }
    assert (canary.feedback_requests, canary.feedback_rate) == (2, 0.2)
    assert canary.feedback["thumbs"] == ScoreSummary(mean=0.5, count=2)
    assert stable.arm is None and stable.ttft_p50_ms is None and stable.cost == 0.0
    assert stable.feedback_rate == 0.5
    assert json.loads(json.dumps(canary.to_dict()))["metrics"]["length"]["count"] == 1


def test_time_buckets_split_a_group() -> None:
    rows = quality(hand_made(), bucket="1h")
    canary = [row for row in rows if row.arm == "canary"]
    assert [row.bucket for row in canary] == [datetime(2026, 12, 1, 10, tzinfo=UTC)]
    stable = [row for row in rows if row.arm is None]
    assert [row.requests for row in stable] == [1, 1]
    assert stable[0].to_dict()["bucket"] == "2026-12-01T23:00:00+00:00"


def test_cost_per_day() -> None:
    days = cost_per_day(hand_made())
    assert [(day.arm, day.day, day.cost, day.requests, day.tokens) for day in days] == [
        ("canary", date(2026, 12, 1), pytest.approx(5.0), 10, 280),
        (None, date(2026, 12, 1), 0.0, 1, 3),
        (None, date(2026, 12, 2), 0.0, 1, 3),
    ]
    assert days[0].to_dict()["day"] == "2026-12-01"


def test_empty_traffic_has_no_rows() -> None:
    assert quality(hand_made().iloc[0:0]) == []


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"lacks the columns \['latency_ms'\]"):
        quality(hand_made().drop(columns=["latency_ms"]))
    with pytest.raises(ValueError, match=r"scores frame lacks the columns \['metric'\]"):
        quality(hand_made(), SCORES.drop(columns=["metric"]))
    with pytest.raises(ValueError, match="pandas frequency"):
        quality(hand_made(), bucket="hourly")
