"""Monitor passes: online scoring of sampled traffic, the rollout controller, then the alert
rules. Run on demand (`evalhub monitor run`, `POST /api/v1/monitors/run`) or on a schedule inside
`evalhub serve`, where a lease row keeps it to one process at a time among servers sharing a
database."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta

from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from evalhub.monitoring.alerts import evaluate_alerts
from evalhub.monitoring.controller import Controller, RolloutDecision
from evalhub.monitoring.online import score_rows, unscored
from evalhub.monitoring.tables import MonitorLeaseRow
from evalhub.platform import Platform
from evalhub.serving.deployments import Deployment
from registry.db import writer
from registry.tables import utcnow

log = logging.getLogger(__name__)

LEASE = "monitor"
#: How far back a pass looks for sampled records still to score.
SCORING_WINDOW = timedelta(hours=1)


Flush = Callable[[float], bool]
FLUSH_SECONDS = 10.0


class PassReport(BaseModel):
    scored: int
    decisions: list[RolloutDecision]
    alerts_fired: int = 0


def run_pass(
    platform: Platform, deployment: str | None = None, *, flush: Flush | None = None
) -> PassReport:
    """`flush`, in a server process, first waits for its traffic log to store what it journaled,
    so the pass sees every request answered before it began."""
    if flush is not None:
        flush(FLUSH_SECONDS)
    controller = Controller(platform)
    service = controller.deployments
    targets = [service.get(deployment)] if deployment else service.list()
    scored = 0
    decisions = []
    for target in targets:
        scored += _score_sample(platform, target)
        decision = controller.step(target)
        if decision is not None:
            decisions.append(decision)
    fired = evaluate_alerts(platform, deployment)
    return PassReport(scored=scored, decisions=decisions, alerts_fired=len(fired))


def _score_sample(platform: Platform, deployment: Deployment) -> int:
    settings = deployment.monitoring
    if settings is None or not settings.metrics or settings.sample_rate <= 0:
        return 0
    names = [metric.name for metric in settings.metrics]
    since = utcnow() - SCORING_WINDOW
    rows = unscored(platform, deployment.name, since, names, settings.sample_rate)
    return score_rows(platform, rows, settings.metrics)


def take_lease(platform: Platform, holder: str, seconds: float) -> bool:
    """True when `holder` runs the passes for the next `seconds` (it had the lease, or the
    lease was free or expired)."""
    now = utcnow()
    try:
        with Session(writer(platform.engine)) as session:
            row = session.get(MonitorLeaseRow, LEASE, with_for_update=True)
            if row is None:
                row = MonitorLeaseRow(name=LEASE, holder=holder, expires_at=now)
            elif row.holder != holder and row.expires_at > now:
                return False
            row.holder = holder
            row.expires_at = now + timedelta(seconds=seconds)
            session.add(row)
            session.commit()
            return True
    except IntegrityError:  # another process took it first
        return False


class MonitorScheduler:
    def __init__(self, platform: Platform, interval: float, flush: Flush | None = None) -> None:
        self.platform = platform
        self.interval = interval
        self.flush = flush
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evalhub-monitor", daemon=True)

    def start(self) -> MonitorScheduler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if take_lease(self.platform, self.holder, self.interval * 3):
                    report = run_pass(self.platform, flush=self.flush)
                    for decision in report.decisions:
                        log.info("rollout of %s: %s (%s)", decision.deployment, decision.action,
                                 decision.reason)  # fmt: skip
            except Exception:
                log.exception("monitor pass failed")
