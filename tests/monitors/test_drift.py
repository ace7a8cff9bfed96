"""Drift checks against traffic of known distribution, with real Evidently stattests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from monitors.drift import DriftOptions, drift_check, drift_report_html
from tests.monitors.synthetic import CODE_WORDS, embeddings, traffic

ROWS = 400
SEEDS = 40


def windows(seed: int, **shifted: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    return traffic(rng, ROWS), traffic(rng, ROWS, **shifted)


def test_traffic_from_the_reference_distribution_rarely_alarms() -> None:
    alarms = 0
    for seed in range(SEEDS):
        reference, current = windows(seed)
        rng = np.random.default_rng(1000 + seed)
        result = drift_check(
            reference,
            current,
            reference_embeddings=embeddings(rng, ROWS),
            current_embeddings=embeddings(rng, ROWS),
        )
        alarms += result.drifted
    false_alarm_rate = alarms / SEEDS
    print(f"drift false alarm rate over {SEEDS} seeds: {false_alarm_rate:.3f}")
    assert false_alarm_rate <= 0.10


def test_traffic_on_other_topics_and_of_other_lengths_is_flagged() -> None:
    for seed in range(5):
        reference, current = windows(
            seed, words=CODE_WORDS, prompt_words=25, response_words=90, version="bot/3"
        )
        rng = np.random.default_rng(seed)
        result = drift_check(
            reference,
            current,
            reference_embeddings=embeddings(rng, ROWS),
            current_embeddings=embeddings(rng, ROWS, shift=3.0),
        )
        assert result.drifted
        assert result.embedding_drifted
        assert result.share_drifted >= 0.5
        for column in ("prompt_chars", "response_words", "prompt_non_letter_share", "version"):
            assert result.column(column).drifted, column
        assert not result.column("latency_ms").drifted


def test_a_change_of_topic_alone_is_flagged_by_the_embeddings() -> None:
    reference, current = windows(3)
    rng = np.random.default_rng(3)
    result = drift_check(
        reference,
        current,
        reference_embeddings=embeddings(rng, ROWS),
        current_embeddings=embeddings(rng, ROWS, shift=3.0),
    )
    embedding = result.column("prompt_embedding")
    assert embedding.kind == "embedding" and embedding.method == "domain classifier ROC AUC"
    assert embedding.score > embedding.threshold >= 0.55
    assert result.share_drifted < 0.5
    assert result.drifted


def test_each_column_reports_its_kind_method_and_threshold() -> None:
    reference, current = windows(0)
    result = drift_check(reference, current)
    kinds = {column.column: column.kind for column in result.columns}
    assert kinds["prompt_chars"] == kinds["response_lines"] == "text_descriptor"
    assert kinds["latency_ms"] == kinds["completion_tokens"] == "numeric"
    assert kinds["arm"] == kinds["version"] == "categorical"
    assert "prompt_embedding" not in kinds and result.embedding_drifted is None
    latency = result.column("latency_ms")
    assert (latency.method, latency.threshold) == ("K-S p_value", 0.05)
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["drift_share"] == 0.5 and len(summary["columns"]) == len(result.columns)


def test_large_windows_use_distances_not_tests() -> None:
    rng = np.random.default_rng(0)
    reference = traffic(rng, 1200)
    current = traffic(rng, 1200, latency_ms=600, version="bot/3")
    result = drift_check(reference, current)
    latency, version = result.column("latency_ms"), result.column("version")
    assert latency.method == "Wasserstein distance (normed)" and latency.drifted
    assert version.method == "Jensen-Shannon distance" and version.drifted
    assert not result.column("prompt_chars").drifted


def test_a_column_null_in_one_window_is_skipped_and_said_so() -> None:
    reference, current = windows(0)
    current["completion_tokens"] = None
    current["arm"] = None
    result = drift_check(reference, current)
    skipped = {column.column: column.reason for column in result.skipped}
    assert skipped == {
        "completion_tokens": "entirely null in the current window",
        "arm": "entirely null in the current window",
    }
    assert "arm" not in {column.column for column in result.columns}


def test_options_choose_the_method() -> None:
    reference, current = windows(0)
    options = DriftOptions(numeric_method="psi", numeric_threshold=0.2)
    latency = drift_check(reference, current, options=options).column("latency_ms")
    assert (latency.method, latency.threshold) == ("PSI", 0.2)


def test_the_html_report_is_built_on_request() -> None:
    reference, current = windows(0, prompt_words=30)
    html = drift_report_html(reference, current)
    assert html.lstrip().lower().startswith("<html") or "<html" in html[:500].lower()
    assert "prompt_chars" in html


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda frame: frame.iloc[0:0], "current window has no rows"),
        (
            lambda frame: frame.drop(columns=["response"]),
            r"lacks the traffic columns \['response'\]",
        ),
    ],
)
def test_bad_windows_are_refused(
    change: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    reference, current = windows(0)
    with pytest.raises(ValueError, match=message):
        drift_check(reference, change(current))


def test_bad_embeddings_are_refused() -> None:
    reference, current = windows(0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="both windows, or for neither"):
        drift_check(reference, current, reference_embeddings=embeddings(rng, 50))
    with pytest.raises(ValueError, match="differ in dimension"):
        drift_check(
            reference,
            current,
            reference_embeddings=embeddings(rng, 50, dim=8),
            current_embeddings=embeddings(rng, 50, dim=16),
        )
    with pytest.raises(ValueError, match="2-D array of at least 10 rows"):
        drift_check(
            reference,
            current,
            reference_embeddings=np.zeros(5),
            current_embeddings=embeddings(rng, 50),
        )
    with pytest.raises(ValueError, match="drift_share must be in"):
        DriftOptions(drift_share=0)
