"""Alert rules on a deployment's monitored values, the alerts they fire, and their delivery to a
webhook.

Each monitor pass computes every rule's value over its trailing window (`monitoring.quality`),
asks `monitors.alerts.evaluate_rule` whether it fires, and stores an alert with the numbers. A
rule does not fire again while its previous alert is still within the rule's window (a budget
rule on `cost_per_day`: not again the same UTC day), so a lasting breach is one alert, not a
storm. An alert is POSTed to its rule's webhook as JSON, signed with the rule's secret
(`X-Evalhub-Signature: sha256=<hex>`), and retried with backoff on connection errors and 5xx;
every attempt is stored.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import datetime, timedelta
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import Session, col, select

from evalhub import __version__
from evalhub.monitoring.online import ONLINE_METRICS
from evalhub.monitoring.quality import Window, overall, today
from evalhub.monitoring.tables import AlertDeliveryRow, AlertRow, AlertRuleRow
from evalhub.platform import Platform
from evalhub.serving.deployments import DeploymentService
from monitors.alerts import AlertEvaluation, Comparison, Severity, evaluate_rule, sign
from monitors.alerts import AlertRule as MonitorRule
from monitors.quality import QualityRow
from registry.db import writer
from registry.entities import Mutation, Page
from registry.errors import already_exists, invalid, not_found
from registry.names import check_name
from registry.paging import decode_page_token, fetch_page, page_of
from registry.tables import stored_id, utcnow

log = logging.getLogger(__name__)

ACTOR = "monitor"
SIGNATURE_HEADER = "X-Evalhub-Signature"
#: Attempts per alert, and the waits between them (connection errors, timeouts, 429 and 5xx).
DELIVERY_ATTEMPTS = 3
BACKOFF_SECONDS = (0.5, 1.0)
WEBHOOK_TIMEOUT_SECONDS = 5.0

#: Rule metric -> the field of the window's quality row.
QUALITY_METRICS = {
    "error_rate": "error_rate",
    "latency_p50": "latency_p50_ms",
    "latency_p95": "latency_p95_ms",
    "latency_p99": "latency_p99_ms",
    "ttft_p50": "ttft_p50_ms",
    "cost": "cost",
    "requests": "requests",
    "feedback_rate": "feedback_rate",
}
METRIC_PREFIX = "metric:"
FEEDBACK_PREFIX = "feedback:"
COST_PER_DAY = "cost_per_day"
MAX_WINDOW_SECONDS = 30 * 24 * 3600

Delivery = Literal["none", "pending", "delivered", "failed"]


class AlertRuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128)
    metric: str = Field(
        max_length=128,
        description="error_rate, latency_p50, latency_p95, latency_p99, ttft_p50, cost, "
        "requests, feedback_rate, metric:<online metric> (mean), feedback:<name> (mean), or "
        "cost_per_day (the current UTC day's cost so far: a budget)",
    )
    deployment: str = Field(max_length=128)
    arm: str | None = Field(
        default=None, pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="null: every arm"
    )
    window_seconds: int = Field(default=300, ge=1, le=MAX_WINDOW_SECONDS)
    comparison: Comparison = ">"
    threshold: float
    severity: Severity = "warning"
    webhook_url: str | None = Field(default=None, max_length=2048)
    secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="signs each webhook body (HMAC-SHA256); never returned",
    )

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("threshold must be a finite number")
        return value


class AlertRule(BaseModel):
    id: int
    name: str
    metric: str
    deployment: str
    arm: str | None
    window_seconds: int
    comparison: str
    threshold: float
    severity: str
    webhook_url: str | None
    has_secret: bool = Field(description="webhook bodies are signed; the secret is not shown")
    created_at: datetime
    created_by: str


class Alert(BaseModel):
    id: int
    rule: str
    deployment: str
    arm: str | None
    metric: str
    severity: str
    value: float
    condition: str = Field(description="what held, e.g. 'error_rate > 0.05'")
    evidence: dict[str, Any] = Field(description="the value, threshold, window and its numbers")
    delivery: Delivery
    delivered: bool
    created_at: datetime


class AlertDelivery(BaseModel):
    attempt: int
    url: str
    status_code: int | None
    error: str | None
    duration_ms: float
    created_at: datetime


class AlertDetail(Alert):
    deliveries: list[AlertDelivery]


def check_metric(platform: Platform, metric: str) -> None:
    """Refuses (400) a metric no rule can watch."""
    if metric in QUALITY_METRICS or metric == COST_PER_DAY:
        return
    if metric.startswith(METRIC_PREFIX):
        name = metric.removeprefix(METRIC_PREFIX)
        if name in ONLINE_METRICS:
            return
        raise invalid(
            f"unknown online metric {name!r} in {metric!r}; online metrics: "
            f"{', '.join(ONLINE_METRICS)}"
        )
    if metric.startswith(FEEDBACK_PREFIX):
        name = metric.removeprefix(FEEDBACK_PREFIX)
        scales = platform.settings.feedback_scales
        if name in scales:
            return
        raise invalid(
            f"unknown feedback {name!r} in {metric!r}; declared: {sorted(scales)} "
            "(EVALHUB_FEEDBACK_SCALES)"
        )
    raise invalid(
        f"unknown metric {metric!r}; a rule watches one of {', '.join(QUALITY_METRICS)}, "
        f"{COST_PER_DAY}, {METRIC_PREFIX}<online metric> or {FEEDBACK_PREFIX}<name>"
    )


def check_webhook(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid(f"webhook_url must be an http:// or https:// URL with a host, got {url!r}")


def value_of(metric: str, row: QualityRow | None) -> float | None:
    """The rule's value in a window's quality row. No traffic: no requests and no cost, and
    nothing else."""
    if row is None:
        return 0.0 if metric in ("requests", "cost") else None
    if metric in QUALITY_METRICS:
        value = getattr(row, QUALITY_METRICS[metric])
        return None if value is None else float(value)
    if metric.startswith(METRIC_PREFIX):
        summary = row.metrics.get(metric.removeprefix(METRIC_PREFIX))
    else:
        summary = row.feedback.get(metric.removeprefix(FEEDBACK_PREFIX))
    return None if summary is None else summary.mean


class AlertService:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    # -- rules -------------------------------------------------------------------------------

    def create_rule(self, body: AlertRuleCreate, *, actor: str) -> AlertRule:
        check_name(body.name, "alert rule")
        check_metric(self.platform, body.metric)
        if body.webhook_url is not None:
            check_webhook(body.webhook_url)
        DeploymentService(self.platform).get(body.deployment)  # 404 when there is none
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            if _find_rule(session, body.name) is not None:
                raise already_exists(f"alert rule {body.name!r} already exists")
            row = AlertRuleRow(**body.model_dump(), created_by=actor)
            session.add(row)
            session.flush()
            view = _rule(row)
            self.platform.events.record(
                session,
                Mutation(
                    actor=actor,
                    action="alert_rule.create",
                    resource=f"alert-rules/{row.name}",
                    after=view.model_dump(mode="json"),
                ),
            )
            session.commit()
        return view

    def rules(self, deployment: str | None = None) -> list[AlertRule]:
        query = select(AlertRuleRow)
        if deployment is not None:
            query = query.where(AlertRuleRow.deployment == deployment)
        with Session(self.platform.engine) as session:
            return [_rule(row) for row in session.exec(query.order_by(col(AlertRuleRow.id)))]

    def delete_rule(self, name: str, *, actor: str) -> None:
        """Its alerts stay, as history."""
        with Session(writer(self.platform.engine)) as session:
            row = _find_rule(session, name)
            if row is None:
                raise not_found(f"alert rule {name!r} does not exist")
            before = _rule(row).model_dump(mode="json")
            session.delete(row)
            self.platform.events.record(
                session,
                Mutation(
                    actor=actor,
                    action="alert_rule.delete",
                    resource=f"alert-rules/{name}",
                    before=before,
                ),
            )
            session.commit()

    # -- alerts ------------------------------------------------------------------------------

    def search(
        self,
        *,
        deployment: str | None = None,
        rule: str | None = None,
        limit: int = 100,
        page_token: str | None = None,
    ) -> Page[Alert]:
        """Newest first."""
        query = select(AlertRow)
        if deployment is not None:
            query = query.where(AlertRow.deployment == deployment)
        if rule is not None:
            query = query.where(AlertRow.rule == rule)
        after = decode_page_token(page_token)
        if after is not None:
            query = query.where(col(AlertRow.id) < after)
        with Session(self.platform.engine) as session:
            rows, more = fetch_page(session, query.order_by(col(AlertRow.id).desc()), limit)
        return page_of(rows, more, _alert)

    def get(self, alert_id: int) -> AlertDetail:
        with Session(self.platform.engine) as session:
            row = session.get(AlertRow, alert_id)
            if row is None:
                raise not_found(f"alert {alert_id} does not exist")
            attempts = session.exec(
                select(AlertDeliveryRow)
                .where(AlertDeliveryRow.alert_id == alert_id)
                .order_by(col(AlertDeliveryRow.attempt))
            ).all()
        deliveries = [AlertDelivery.model_validate(a, from_attributes=True) for a in attempts]
        return AlertDetail(**_alert(row).model_dump(), deliveries=deliveries)

    # -- evaluation and delivery -------------------------------------------------------------

    def evaluate(self, deployment: str | None = None, now: datetime | None = None) -> list[Alert]:
        """Evaluates every rule (of `deployment`), stores and delivers what fires."""
        now = now or utcnow()
        with Session(self.platform.engine) as session:
            query = select(AlertRuleRow).order_by(col(AlertRuleRow.id))
            if deployment is not None:
                query = query.where(AlertRuleRow.deployment == deployment)
            rules = list(session.exec(query))
        fired = []
        for rule in rules:
            try:
                alert = self._evaluate(rule, now)
                if alert is not None:
                    fired.append(self.deliver(alert.id) if rule.webhook_url else alert)
            except Exception:  # one rule's failure must not silence the others
                log.exception("alert rule %r could not be evaluated", rule.name)
        return fired

    def _evaluate(self, rule: AlertRuleRow, now: datetime) -> Alert | None:
        with Session(self.platform.engine) as session:
            if _quiet(rule, _last_alert(session, stored_id(rule)), now):
                return None
        evaluation, numbers, span = self._measure(rule, now)
        if not evaluation.fired or evaluation.value is None:
            return None
        evidence = {
            **evaluation.evidence,
            "window": {"since": span.since.isoformat(), "until": span.until.isoformat()},
            "numbers": numbers,
        }
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            # Under the rule's lock, so that two passes at once fire it once.
            locked = session.get(AlertRuleRow, stored_id(rule), with_for_update=True)
            if locked is None or _quiet(locked, _last_alert(session, stored_id(rule)), now):
                return None
            row = AlertRow(
                rule_id=stored_id(rule),
                rule=rule.name,
                deployment=rule.deployment,
                arm=rule.arm,
                metric=rule.metric,
                severity=rule.severity,
                value=evaluation.value,
                evidence=evidence,
                delivery="pending" if rule.webhook_url else "none",
                created_at=now,
            )
            session.add(row)
            session.flush()
            alert = _alert(row)
            self.platform.events.record(
                session,
                Mutation(
                    actor=ACTOR,
                    action="alert.fired",
                    resource=f"alerts/{alert.id}",
                    after=alert.model_dump(mode="json"),
                ),
            )
            session.commit()
        log.warning("alert %s fired: %s on %s (%s)", alert.id, alert.condition, alert.deployment,
                    alert.severity)  # fmt: skip
        return alert

    def _measure(
        self, rule: AlertRuleRow, now: datetime
    ) -> tuple[AlertEvaluation, dict[str, Any], Window]:
        monitored = MonitorRule(
            metric=rule.metric,
            deployment=rule.deployment,
            arm=rule.arm,
            window_seconds=rule.window_seconds,
            # Both were checked on the way in.
            comparison=cast(Comparison, rule.comparison),
            threshold=rule.threshold,
            severity=cast(Severity, rule.severity),
        )
        if rule.metric == COST_PER_DAY:
            span = today(now)
            row = overall(self.platform, rule.deployment, span, arm=rule.arm)
            numbers: dict[str, Any] = {
                "day": span.since.date().isoformat(),
                "cost": row.cost if row else 0.0,
                "requests": row.requests if row else 0,
                "prompt_tokens": row.prompt_tokens if row else 0,
                "completion_tokens": row.completion_tokens if row else 0,
            }
            return evaluate_rule(monitored, numbers["cost"]), numbers, span
        span = Window(now - timedelta(seconds=rule.window_seconds), now + timedelta(microseconds=1))
        row = overall(self.platform, rule.deployment, span, arm=rule.arm)
        numbers = row.to_dict() if row is not None else {"requests": 0}
        for key in ("deployment", "arm", "version", "bucket"):
            numbers.pop(key, None)
        return evaluate_rule(monitored, value_of(rule.metric, row)), numbers, span

    def deliver(self, alert_id: int) -> Alert:
        """POSTs the alert to its rule's webhook, retrying connection errors, timeouts, 429 and
        5xx with backoff; stores every attempt and the outcome."""
        with Session(self.platform.engine) as session:
            row = session.get(AlertRow, alert_id)
            if row is None:
                raise not_found(f"alert {alert_id} does not exist")
            rule = session.get(AlertRuleRow, row.rule_id)
        if rule is None or not rule.webhook_url:
            return self._settle(alert_id, "none")
        url = rule.webhook_url
        body = webhook_body(_alert(row))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"evalhub/{__version__}",
            "X-Evalhub-Alert": str(alert_id),
        }
        if rule.secret:
            headers[SIGNATURE_HEADER] = sign(body, rule.secret)
        outcome: Delivery = "failed"
        attempt = 0
        with httpx.Client(timeout=WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False) as http:
            for attempt in range(1, DELIVERY_ATTEMPTS + 1):
                started = time.monotonic()
                status, error, retry = _post(http, url, body, headers)
                elapsed_ms = (time.monotonic() - started) * 1000
                self._attempted(alert_id, attempt, url, status, error, elapsed_ms)
                if error is None:
                    outcome = "delivered"
                    break
                if not retry or attempt == DELIVERY_ATTEMPTS:
                    break
                time.sleep(BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS)) - 1])
        if outcome == "failed":
            log.warning("alert %s: webhook delivery failed after %s attempt(s)", alert_id, attempt)
        return self._settle(alert_id, outcome)

    def _attempted(
        self,
        alert_id: int,
        attempt: int,
        url: str,
        status: int | None,
        error: str | None,
        duration_ms: float,
    ) -> None:
        with Session(writer(self.platform.engine)) as session:
            session.add(
                AlertDeliveryRow(
                    alert_id=alert_id,
                    attempt=attempt,
                    url=url,
                    status_code=status,
                    error=error,
                    duration_ms=duration_ms,
                )
            )
            session.commit()

    def _settle(self, alert_id: int, outcome: Delivery) -> Alert:
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            row = session.get(AlertRow, alert_id)
            assert row is not None
            row.delivery = outcome
            session.add(row)
            session.commit()
            return _alert(row)


def _post(
    http: httpx.Client, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int | None, str | None, bool]:
    """(status code, error, whether to retry) of one attempt."""
    try:
        response = http.post(url, content=body, headers=headers)
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        return None, f"{type(error).__name__}: {error}"[:2000], True
    status = response.status_code
    if 200 <= status < 300:
        return status, None, False
    return status, f"HTTP {status}: {response.text[:500]}", status >= 500 or status == 429


def webhook_body(alert: Alert) -> bytes:
    """The exact bytes POSTed, and signed: the alert without its delivery state."""
    payload = alert.model_dump(mode="json", exclude={"delivery", "delivered"})
    return json.dumps({"event": "alert.fired", **payload}, sort_keys=True).encode()


def evaluate_alerts(platform: Platform, deployment: str | None = None) -> list[Alert]:
    """What a monitor pass runs: every rule's evaluation, then delivery of what fired."""
    return AlertService(platform).evaluate(deployment)


def _quiet(rule: AlertRuleRow, last: AlertRow | None, now: datetime) -> bool:
    """Whether the rule's previous alert still covers `now`."""
    if last is None:
        return False
    if rule.metric == COST_PER_DAY and last.created_at >= today(now).since:
        return True
    return last.created_at > now - timedelta(seconds=rule.window_seconds)


def _last_alert(session: Session, rule_id: int) -> AlertRow | None:
    return session.exec(
        select(AlertRow).where(AlertRow.rule_id == rule_id).order_by(col(AlertRow.id).desc())
    ).first()


def _find_rule(session: Session, name: str) -> AlertRuleRow | None:
    return session.exec(select(AlertRuleRow).where(AlertRuleRow.name == name)).first()


def _rule(row: AlertRuleRow) -> AlertRule:
    return AlertRule(
        id=stored_id(row),
        name=row.name,
        metric=row.metric,
        deployment=row.deployment,
        arm=row.arm,
        window_seconds=row.window_seconds,
        comparison=row.comparison,
        threshold=row.threshold,
        severity=row.severity,
        webhook_url=row.webhook_url,
        has_secret=bool(row.secret),
        created_at=row.created_at,
        created_by=row.created_by,
    )


def _alert(row: AlertRow) -> Alert:
    return Alert(
        id=stored_id(row),
        rule=row.rule,
        deployment=row.deployment,
        arm=row.arm,
        metric=row.metric,
        severity=row.severity,
        value=row.value,
        condition=str(row.evidence.get("condition", "")),
        evidence=row.evidence,
        delivery=cast(Delivery, row.delivery),
        delivered=row.delivery == "delivered",
        created_at=row.created_at,
    )
