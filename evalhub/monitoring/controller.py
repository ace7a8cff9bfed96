"""The rollout controller: after each batch of traffic, compare a rollout's candidate arm with its
control on the analysis' guard metrics (`monitors.rollout`), store the decision with its numbers,
and act on it through the deployment service: step, pause, or roll back.

Promotion into a last step of 100% completes the rollout and moves `@production` (of the
candidate's registered model) to the candidate's exact version, with the decision's reason.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel
from sqlmodel import Session, col, select

from evalhub.monitoring.frames import feedback_frame, scores_frame, traffic_frame
from evalhub.monitoring.online import score_rows, traffic_rows
from evalhub.monitoring.tables import RolloutDecisionRow
from evalhub.platform import Platform
from evalhub.serving.deployments import (
    Deployment,
    DeploymentService,
    GuardSpec,
    OnlineMetric,
    RolloutAction,
    RolloutAnalysis,
)
from monitors.drift import drift_check
from monitors.rollout import (
    DRIFT,
    ERROR_RATE,
    FEEDBACK_PREFIX,
    LATENCY_P95,
    Analysis,
    Decision,
    GuardMetric,
    decide,
)
from registry.db import writer
from registry.entities import Mutation, Page
from registry.errors import RegistryError, invalid
from registry.paging import decode_page_token, fetch_page, page_of
from registry.tables import utcnow

if TYPE_CHECKING:  # pandas loads in 0.5 s: only the functions that use it import it
    import pandas as pd

log = logging.getLogger(__name__)

ACTOR = "rollout-controller"
PRODUCTION = "production"


class RolloutDecision(BaseModel):
    id: int | None
    """None for a hold that repeats the step's stored hold."""
    deployment: str
    action: str
    step: int
    weight: float
    candidate_version: str | None
    control_version: str | None
    reason: str
    method: str
    metrics: list[dict[str, object]]
    created_at: datetime


def is_online_metric(guard: GuardSpec) -> bool:
    return guard.name not in (ERROR_RATE, LATENCY_P95, DRIFT) and not guard.name.startswith(
        FEEDBACK_PREFIX
    )


def check_analysis(platform: Platform, analysis: RolloutAnalysis) -> None:
    """Refuses (400) guards the controller cannot measure, before a rollout starts."""
    from evalhub.monitoring.online import check_metrics

    check_metrics(platform, [_online(g) for g in analysis.guards if is_online_metric(g)])
    _analysis(analysis)


def _online(guard: GuardSpec) -> OnlineMetric:
    return OnlineMetric(name=guard.name, **guard.options)


def _analysis(spec: RolloutAnalysis) -> Analysis:
    try:
        return Analysis(
            guards=tuple(
                GuardMetric(name=g.name, margin=g.margin, direction=g.direction)
                for g in spec.guards
            ),
            min_requests=spec.min_requests,
            alpha=spec.alpha,
            max_wait_seconds=spec.max_wait_seconds,
        )
    except ValueError as error:
        raise invalid(f"analysis: {error}") from error


def _drifted(candidate: pd.DataFrame, control: pd.DataFrame, min_samples: int) -> bool | None:
    """Whether the candidate's answers drifted from the control's in the step (their texts,
    lengths and latency); None with too few requests. The prompts are left out (both arms draw
    them alike, users being split at random) and so are arm and version (they differ by design)."""
    if min(len(candidate), len(control)) < min_samples:
        return None
    blind = {"arm": None, "version": None, "prompt": None, "prompt_tokens": None}
    return drift_check(control.assign(**blind), candidate.assign(**blind)).drifted


class Controller:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.deployments = DeploymentService(platform)

    def step(self, deployment: Deployment, now: datetime | None = None) -> RolloutDecision | None:
        """Decides for one deployment's running rollout under analysis, and acts; None when it
        has none."""
        rollout = deployment.rollout
        if rollout is None or rollout.status != "running" or rollout.analysis is None:
            return None
        now = now or utcnow()
        spec = rollout.analysis
        arms = [rollout.control, rollout.candidate]
        rows = traffic_rows(self.platform, deployment.name, since=rollout.updated_at, arms=arms)
        score_rows(self.platform, rows, [_online(g) for g in spec.guards if is_online_metric(g)])
        frame = traffic_frame(rows)
        ids = frame["request_id"].tolist()
        analysis = _analysis(spec)
        candidate = frame[frame["arm"] == rollout.candidate]
        control = frame[frame["arm"] == rollout.control]
        drifted = None
        if any(guard.name == DRIFT for guard in spec.guards):
            drifted = _drifted(candidate, control, analysis.min_samples)
        decision = decide(
            analysis,
            candidate,
            control,
            step_started_at=rollout.updated_at,
            now=now,
            scores=scores_frame(self.platform, ids),
            feedback=feedback_frame(self.platform, ids),
            drift=drifted,
        )
        stored = self._store(deployment, decision)
        self._act(deployment, decision)
        return stored

    def _versions(self, deployment: Deployment) -> tuple[str | None, str | None]:
        rollout = deployment.rollout
        assert rollout is not None
        refs = {arm.name: arm.model for arm in deployment.arms}
        found: list[str | None] = []
        for arm in (rollout.candidate, rollout.control):
            try:
                found.append(self.platform.registry.resolve(refs[arm]).ref)
            except RegistryError:  # an arm that resolves to nothing has no version to name
                found.append(None)
        return found[0], found[1]

    def _store(self, deployment: Deployment, decision: Decision) -> RolloutDecision:
        rollout = deployment.rollout
        assert rollout is not None
        candidate, control = self._versions(deployment)
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            row = RolloutDecisionRow(
                deployment=deployment.name,
                action=decision.action,
                step=rollout.index,
                weight=rollout.steps[rollout.index],
                candidate_version=candidate,
                control_version=control,
                reason=decision.reason,
                method=decision.method,
                metrics=decision.to_dict()["metrics"],
            )
            last = session.exec(
                select(RolloutDecisionRow)
                .where(RolloutDecisionRow.deployment == deployment.name)
                .order_by(col(RolloutDecisionRow.id).desc())
            ).first()
            repeat = (
                decision.action == "hold"
                and last is not None
                and last.action == "hold"
                and last.step == row.step
                and last.created_at >= rollout.updated_at
            )
            if repeat:  # one stored hold per step: later ones are returned, not stored
                session.rollback()
                return _view(row.model_copy(update={"created_at": utcnow()}))
            session.add(row)
            session.flush()
            view = _view(row)
            self.platform.events.record(
                session,
                Mutation(
                    actor=ACTOR,
                    action=f"rollout.decision.{decision.action}",
                    resource=f"deployments/{deployment.name}/decisions/{row.id}",
                    after=view.model_dump(mode="json"),
                ),
            )
            session.commit()
        return view

    def _act(self, deployment: Deployment, decision: Decision) -> None:
        name = deployment.name
        rollout = deployment.rollout
        assert rollout is not None
        if decision.action == "rollback":
            self.deployments.rollback(name, actor=ACTOR)
        elif decision.action == "inconclusive":
            self.deployments.rollout(name, RolloutAction(action="pause"), actor=ACTOR)
        elif decision.action == "promote":
            after = self.deployments.rollout(name, RolloutAction(action="step"), actor=ACTOR)
            if after.rollout is not None and after.rollout.status == "completed":
                self._move_production(after, decision.reason)

    def _move_production(self, deployment: Deployment, reason: str) -> None:
        rollout = deployment.rollout
        assert rollout is not None
        ref = next(arm.model for arm in deployment.arms if arm.name == rollout.candidate)
        version = self.platform.registry.resolve(ref)
        self.platform.registry.set_alias(
            version.model,
            PRODUCTION,
            version.version,
            reason=f"rollout of {deployment.name} completed: {reason}",
            actor=ACTOR,
        )

    def decisions(
        self, deployment: str, *, limit: int = 100, page_token: str | None = None
    ) -> Page[RolloutDecision]:
        """Newest first."""
        self.deployments.get(deployment)  # a 404 for an unknown deployment
        query = select(RolloutDecisionRow).where(RolloutDecisionRow.deployment == deployment)
        after = decode_page_token(page_token)
        if after is not None:
            query = query.where(col(RolloutDecisionRow.id) < after)
        with Session(self.platform.engine) as session:
            rows, more = fetch_page(
                session, query.order_by(col(RolloutDecisionRow.id).desc()), limit
            )
        return page_of(rows, more, _view)


def _view(row: RolloutDecisionRow) -> RolloutDecision:
    return RolloutDecision.model_validate(row, from_attributes=True)
