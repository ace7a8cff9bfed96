"""Alert rules and webhook signatures."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from monitors.alerts import AlertRule, Comparison, evaluate_rule, sign, verify


@pytest.mark.parametrize(
    ("comparison", "value", "fired"),
    [
        (">", 0.06, True),
        (">", 0.05, False),
        (">=", 0.05, True),
        ("<", 0.04, True),
        ("<", 0.05, False),
        ("<=", 0.05, True),
        ("==", 0.05, True),
        ("==", 0.06, False),
    ],
)
def test_each_comparison(comparison: Comparison, value: float, fired: bool) -> None:
    rule = AlertRule("error_rate", "support", comparison=comparison, threshold=0.05)
    assert evaluate_rule(rule, value).fired is fired


def test_the_evidence_says_what_was_compared() -> None:
    rule = AlertRule(
        "latency_p95_ms",
        "support",
        arm="canary",
        window_seconds=600,
        threshold=800,
        severity="critical",
    )
    evaluation = evaluate_rule(rule, 950.0)
    assert evaluation.fired and evaluation.value == 950.0
    assert evaluation.evidence["condition"] == "latency_p95_ms > 800"
    assert evaluation.evidence["arm"] == "canary" and evaluation.evidence["severity"] == "critical"
    assert json.loads(json.dumps(evaluation.to_dict()))["evidence"]["window_seconds"] == 600


@pytest.mark.parametrize("value", [None, float("nan")])
def test_a_window_without_a_value_fires_nothing(value: float | None) -> None:
    rule = AlertRule("json_valid", "support", comparison="<", threshold=0.9)
    evaluation = evaluate_rule(rule, value)
    assert not evaluation.fired and evaluation.value is None
    assert evaluation.evidence["reason"] == "no value in the window"


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="comparison must be one of"):
        AlertRule("error_rate", "support", comparison="!=")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="severity must be one of"):
        AlertRule("error_rate", "support", severity="page")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window_seconds must be positive"):
        AlertRule("error_rate", "support", window_seconds=0)
    with pytest.raises(ValueError, match="needs a metric and a deployment"):
        AlertRule("", "support")


def test_a_signature_verifies_its_body_only() -> None:
    body = json.dumps({"rule": "error_rate > 0.05", "value": 0.07}).encode()
    signature = sign(body, "s3cret")
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert verify(body, "s3cret", signature)
    assert not verify(body + b" ", "s3cret", signature)
    assert not verify(body, "other", signature)
    assert not verify(body, "s3cret", expected)  # the header carries the prefix
    assert not verify(body, "s3cret", "sha256=é")
