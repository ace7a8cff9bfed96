"""What the monitors found, as Prometheus gauges at /metrics: read from the database at scrape
time, so every server shows the same numbers whichever process ran the monitor pass."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlmodel import Session, col, select

from evalhub.monitoring.drift_tables import DriftCheckRow
from evalhub.monitoring.tables import AlertRow, OnlineScoreRow
from evalhub.platform import Platform
from registry.tables import utcnow

#: The online metric means cover this much recent traffic.
ONLINE_WINDOW = timedelta(hours=1)


class MonitoringCollector(Collector):
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def collect(self) -> Iterator[GaugeMetricFamily]:
        share = GaugeMetricFamily(
            "evalhub_drift_share",
            "Share of drifted columns in the latest drift check, by deployment and arm.",
            labels=["deployment", "arm"],
        )
        detected = GaugeMetricFamily(
            "evalhub_drift_detected",
            "1 when the latest drift check of the deployment and arm found drift.",
            labels=["deployment", "arm"],
        )
        online = GaugeMetricFamily(
            "evalhub_online_metric_mean",
            "Mean online metric score over the last hour, by deployment, arm and metric.",
            labels=["deployment", "arm", "metric"],
        )
        alerts = GaugeMetricFamily(
            "evalhub_alerts_fired",
            "Alerts fired so far, by deployment, arm and severity.",
            labels=["deployment", "arm", "severity"],
        )
        with Session(self.platform.engine) as session:
            fired = session.exec(
                select(AlertRow.deployment, AlertRow.arm, AlertRow.severity, func.count()).group_by(
                    col(AlertRow.deployment), col(AlertRow.arm), col(AlertRow.severity)
                )
            ).all()
            for where, arm, severity, count in fired:
                alerts.add_metric([where, arm or "-", severity], float(count))
            latest = (
                select(func.max(DriftCheckRow.seq))
                .group_by(col(DriftCheckRow.deployment), col(DriftCheckRow.arm))
                .scalar_subquery()
            )
            for check in session.exec(
                select(DriftCheckRow).where(col(DriftCheckRow.seq).in_(latest))
            ):
                labels = [check.deployment, check.arm or "-"]
                share.add_metric(labels, check.share_drifted)
                detected.add_metric(labels, 1.0 if check.drifted else 0.0)
            means = session.exec(
                select(
                    OnlineScoreRow.deployment,
                    OnlineScoreRow.arm,
                    OnlineScoreRow.metric,
                    func.avg(OnlineScoreRow.score),
                )
                .where(col(OnlineScoreRow.created_at) >= utcnow() - ONLINE_WINDOW)
                .group_by(
                    col(OnlineScoreRow.deployment),
                    col(OnlineScoreRow.arm),
                    col(OnlineScoreRow.metric),
                )
            ).all()
            for scored, scored_arm, metric, mean in means:
                if mean is not None:
                    online.add_metric([scored or "-", scored_arm or "-", metric], float(mean))
        yield share
        yield detected
        yield online
        yield alerts
