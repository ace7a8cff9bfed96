"""Alert rules on monitored values, and the signature a webhook receiver checks an alert with.

A rule compares the value of one metric of one deployment (optionally one arm) over a trailing
window with a threshold; whoever computes the value and delivers the alert lives elsewhere. The
webhook body is signed with HMAC-SHA256 of a shared secret, sent as `sha256=<hex>`, the format
GitHub's webhooks use, so receivers can reuse their verification code.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

Comparison = Literal[">", ">=", "<", "<=", "=="]
Severity = Literal["info", "warning", "critical"]

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
}
SIGNATURE_PREFIX = "sha256="


@dataclass(frozen=True)
class AlertRule:
    metric: str
    """A quality figure ("error_rate", "latency_p95_ms", ...) or an online metric's name."""
    deployment: str
    arm: str | None = None
    """None: the deployment's traffic over all its arms."""
    window_seconds: int = 300
    comparison: Comparison = ">"
    threshold: float = 0.0
    severity: Severity = "warning"

    def __post_init__(self) -> None:
        if not self.metric or not self.deployment:
            raise ValueError("an alert rule needs a metric and a deployment")
        if self.window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive, got {self.window_seconds}")
        if self.comparison not in COMPARISONS:
            raise ValueError(
                f"comparison must be one of {list(COMPARISONS)}, got {self.comparison!r}"
            )
        if self.severity not in get_args(Severity):
            raise ValueError(
                f"severity must be one of {list(get_args(Severity))}, got {self.severity!r}"
            )
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold}")


@dataclass(frozen=True)
class AlertEvaluation:
    fired: bool
    value: float | None
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_rule(rule: AlertRule, value: float | None) -> AlertEvaluation:
    """Fires when the window's value meets the rule's comparison. A window without a value (no
    traffic, no scores) fires nothing: silence is not evidence of a breach."""
    evidence: dict[str, Any] = {
        **asdict(rule),
        "condition": f"{rule.metric} {rule.comparison} {rule.threshold}",
    }
    if value is None or math.isnan(value):
        evidence.update(value=None, reason="no value in the window")
        return AlertEvaluation(fired=False, value=None, evidence=evidence)
    evidence["value"] = float(value)
    fired = COMPARISONS[rule.comparison](float(value), rule.threshold)
    return AlertEvaluation(fired=fired, value=float(value), evidence=evidence)


def sign(body: bytes, secret: str) -> str:
    """The signature header value of a webhook body: `sha256=<hex HMAC-SHA256>`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_PREFIX}{digest}"


def verify(body: bytes, secret: str, signature: str) -> bool:
    """Whether `signature` is the body's, compared in constant time."""
    return hmac.compare_digest(sign(body, secret).encode(), signature.encode())
