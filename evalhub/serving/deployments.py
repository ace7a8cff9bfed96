"""Deployments: named traffic splits over arms (model references with weights) on a backend.

Arms name references such as `bot@production`, resolved at request time, so moving an alias
moves the arm. Every change of arms bumps the revision and keeps the previous arms, which is what
`rollback` restores when no rollout is under way. A rollout walks the candidate arm's weight through
steps; rolling it back puts all traffic on its control arm, even after it completed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session, col, select

from evalhub.platform import Platform
from evalhub.serving.merge import ensure_merged
from evalhub.serving.routing import check_arms
from evalhub.serving.serve_plan import PlanRefused, ServeMode, adapter_config_of, decide
from evalhub.serving.tables import BackendRow, DeploymentRow
from registry.db import writer
from registry.entities import ModelKind, ModelVersion, Mutation
from registry.errors import ErrorCode, RegistryError, already_exists, invalid, not_found
from registry.names import check_name, parse_ref
from registry.tables import utcnow

Sticky = Literal["user", "header", "none"]


STRICT = ConfigDict(extra="forbid")


class Arm(BaseModel):
    model_config = STRICT

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    model: str = Field(max_length=256, description="a model reference: bot@production, bot/4, bot")
    weight: float = Field(ge=0, le=100)
    serve: ServeMode = Field(
        default="auto",
        description="adapter: hot-loaded into the backend; merged: merged into its base and served "
        "by a backend of that merged model; auto: merged where the backend cannot load the "
        "adapter (DoRA or modules_to_save on vLLM), else adapter",
    )
    backend: str | None = Field(
        default=None,
        max_length=128,
        description="the backend this arm runs on (a merged champion on one, LoRA challengers on "
        "another); unset: the deployment's",
    )


class DeploymentCreate(BaseModel):
    model_config = STRICT

    name: str = Field(max_length=128)
    backend: str = Field(max_length=128)
    sticky: Sticky = Field(
        default="user",
        description="user: the request's `user` field or X-Evalhub-User header; header: only the "
        "header; none: every request drawn afresh",
    )
    failover: bool = Field(default=False, description="retry a failed request on the control arm")
    arms: list[Arm] = Field(max_length=16)


class OnlineMetric(BaseModel):
    """`{"name": "json_schema", "schema": {...}}`: a metric name and its options, side by side."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(max_length=64)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Monitoring(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    metrics: list[OnlineMetric] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _distinct(self) -> Monitoring:
        names = [metric.name for metric in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"a metric is named more than once: {names}")
        return self


class GuardSpec(BaseModel):
    """A guard metric of a rollout's analysis (see `monitors.rollout`)."""

    model_config = STRICT

    name: str = Field(
        max_length=80,
        description='"error_rate", "latency_p95", "drift", an online metric (json_valid, ...) or '
        '"feedback:<name>"',
    )
    margin: float = Field(default=0.0, ge=0.0, le=1e6, description="tolerated degradation")
    direction: Literal["higher_is_better", "lower_is_better"] | None = None
    options: dict[str, Any] = Field(
        default_factory=dict, description="an online metric's options, e.g. a JSON schema"
    )


class RolloutAnalysis(BaseModel):
    model_config = STRICT

    guards: list[GuardSpec] = Field(min_length=1, max_length=16)
    min_requests: int = Field(default=200, ge=1, le=10_000_000, description="per step")
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    max_wait_seconds: float = Field(default=3600.0, gt=0.0, le=30 * 86400)


class DeploymentUpdate(BaseModel):
    model_config = STRICT

    arms: list[Arm] | None = Field(default=None, max_length=16)
    sticky: Sticky | None = None
    failover: bool | None = None
    monitoring: Monitoring | None = Field(
        default=None, description="online scoring of sampled traffic: sample_rate and metrics"
    )


class Rollout(BaseModel):
    control: str
    candidate: str
    steps: list[float]
    index: int
    status: Literal["running", "paused", "completed", "aborted", "rolled_back"]
    updated_at: datetime
    analysis: RolloutAnalysis | None = None


class RolloutAction(BaseModel):
    model_config = STRICT

    action: Literal["start", "step", "pause", "resume", "abort"]
    steps: list[float] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="candidate weights for start, e.g. [5, 25, 50, 100] (the default)",
    )
    control: str | None = Field(
        default=None, max_length=64, description="arm name (default: the first arm)"
    )
    candidate: str | None = Field(
        default=None, max_length=64, description="arm name (default: the second)"
    )
    analysis: RolloutAnalysis | None = Field(
        default=None,
        description="start only: the controller steps, holds or rolls back by these guards",
    )


class Deployment(BaseModel):
    name: str
    backend: str
    sticky: Sticky
    failover: bool
    arms: list[Arm]
    rollout: Rollout | None
    monitoring: Monitoring | None = None
    revision: int
    previous_arms: list[Arm] | None
    created_at: datetime
    updated_at: datetime
    created_by: str

    @property
    def control(self) -> Arm:
        name = self.rollout.control if self.rollout else self.arms[0].name
        return next(arm for arm in self.arms if arm.name == name)


class DeploymentService:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def create(self, body: DeploymentCreate, *, actor: str) -> Deployment:
        check_name(body.name, "deployment")
        self._check(body.backend, body.arms, actor=actor)
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            if _find(session, body.name) is not None:
                raise already_exists(f"deployment {body.name!r} already exists")
            row = DeploymentRow(
                name=body.name,
                backend=body.backend,
                sticky=body.sticky,
                failover=body.failover,
                arms=[arm.model_dump() for arm in body.arms],
                created_by=actor,
            )
            session.add(row)
            session.flush()
            return self._commit(session, row, actor, "deployment.create", None)

    def get(self, name: str) -> Deployment:
        with Session(self.platform.engine) as session:
            return _entity(_get(session, name))

    def list(self) -> list[Deployment]:
        with Session(self.platform.engine) as session:
            return [
                _entity(r)
                for r in session.exec(select(DeploymentRow).order_by(col(DeploymentRow.id)))
            ]

    def update(self, name: str, body: DeploymentUpdate, *, actor: str) -> Deployment:
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            row = _get(session, name, lock=True)
            before = _entity(row)
            if body.arms is not None:
                self._check(row.backend, body.arms, actor=actor)
                _set_arms(row, [arm.model_dump() for arm in body.arms])
                row.rollout = None  # a manual change of weights ends any rollout
            if body.sticky is not None:
                row.sticky = body.sticky
            if body.failover is not None:
                row.failover = body.failover
            if body.monitoring is not None:
                row.monitoring = body.monitoring.model_dump(mode="json")
            return self._commit(session, row, actor, "deployment.update", before)

    def delete(self, name: str, *, actor: str) -> None:
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            row = _get(session, name, lock=True)
            before = _entity(row)
            session.delete(row)
            self.platform.events.record(
                session,
                Mutation(
                    actor=actor,
                    action="deployment.delete",
                    resource=f"deployments/{name}",
                    before=before.model_dump(mode="json"),
                ),
            )
            session.commit()

    def rollout(self, name: str, body: RolloutAction, *, actor: str) -> Deployment:
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            row = _get(session, name, lock=True)
            before = _entity(row)
            arms = [dict(arm) for arm in row.arms]
            state = dict(row.rollout) if row.rollout else None
            if body.action == "start":
                state = _start_rollout(arms, body)
            else:
                if state is None or state["status"] in ("completed", "aborted"):
                    raise RegistryError(
                        ErrorCode.FAILED_PRECONDITION,
                        f"deployment {name!r} has no rollout in progress; start one first",
                    )
                if body.action == "pause":
                    state["status"] = "paused"
                elif body.action == "resume":
                    state["status"] = "running"
                elif body.action == "abort":
                    state["status"] = "aborted"
                    _weigh(arms, state["control"], state["candidate"], 0.0)
                else:  # step
                    if state["status"] == "paused":
                        raise RegistryError(
                            ErrorCode.FAILED_PRECONDITION,
                            f"the rollout of {name!r} is paused; resume it before stepping",
                        )
                    if state["index"] == len(state["steps"]) - 1:
                        weight = state["steps"][-1]
                        raise RegistryError(
                            ErrorCode.FAILED_PRECONDITION,
                            f"the rollout of {name!r} is complete: its last step ({weight:g}%) "
                            "is in effect; start a new rollout to go further, or roll back",
                        )
                    state["index"] += 1
            if body.action in ("start", "step"):
                weight = state["steps"][state["index"]]
                _weigh(arms, state["control"], state["candidate"], weight)
                if state["index"] == len(state["steps"]) - 1:
                    state["status"] = "completed" if weight >= 100 else state["status"]
            state["updated_at"] = utcnow().isoformat()
            _set_arms(row, arms)
            row.rollout = state
            return self._commit(session, row, actor, f"deployment.rollout.{body.action}", before)

    def rollback(self, name: str, *, actor: str) -> Deployment:
        """All traffic back to the rollout's control arm, even after a completed rollout.

        Without a rollout, it restores the arms the deployment had before its last change.
        """
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            row = _get(session, name, lock=True)
            before = _entity(row)
            rollout = dict(row.rollout) if row.rollout else None
            if rollout is not None and rollout["status"] != "rolled_back":
                arms = [dict(arm) for arm in row.arms]
                _weigh(arms, rollout["control"], rollout["candidate"], 0.0)
                _set_arms(row, arms)
                row.rollout = {
                    **rollout,
                    "status": "rolled_back",
                    "updated_at": utcnow().isoformat(),
                }
            elif row.previous_arms:
                _set_arms(row, [dict(arm) for arm in row.previous_arms])
            else:
                raise RegistryError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"deployment {name!r} has not changed since it was created; nothing to roll back",
                )
            return self._commit(session, row, actor, "deployment.rollback", before)

    def _check(self, backend_name: str, arms: Sequence[Arm], *, actor: str = "") -> None:
        check_arms([arm.model_dump() for arm in arms])
        with Session(self.platform.engine) as session:
            backends = list(session.exec(select(BackendRow)))
        for arm in arms:
            arm_backend = arm.backend or backend_name
            backend = next((b for b in backends if b.name == arm_backend), None)
            if backend is None:
                where = f"arm {arm.name!r}: " if arm.backend else ""
                raise not_found(f"{where}backend {arm_backend!r} does not exist")
            parse_ref(arm.model)
            version = self.platform.registry.resolve(arm.model)
            base_digest = version.digest if version.kind is ModelKind.BASE else version.base_digest
            if base_digest != backend.base_digest:
                served = version.ref if version.kind is ModelKind.BASE else version.base
                raise invalid(
                    f"arm {arm.name!r}: {arm.model} ({version.ref}) runs on {served}, but backend "
                    f"{arm_backend!r} serves {backend.base_ref}"
                )
            if version.kind is ModelKind.BASE:
                if arm.serve == "merged":
                    raise invalid(
                        f"arm {arm.name!r}: {version.ref} is a base model, there is nothing to "
                        "merge; leave serve at auto"
                    )
                continue
            self._check_plan(arm, version, backend, backends, actor)

    def _check_plan(
        self,
        arm: Arm,
        version: ModelVersion,
        backend: BackendRow,
        backends: Sequence[BackendRow],
        actor: str,
    ) -> None:
        """Refuses an arm its backend cannot serve; merges (once) what the arm serves merged."""
        try:
            plan = decide(adapter_config_of(version), backend.kind, arm.serve)
        except PlanRefused as refusal:
            raise invalid(
                f"arm {arm.name!r}: backend {backend.name!r} ({backend.kind}) cannot load "
                f"{version.ref}: {refusal}. Serve it merged into its base instead (serve: merged, "
                "or auto, the default; CLI: --arm NAME=MODEL:WEIGHT:merged), or deploy it on a "
                "local backend"
            ) from None
        if plan.plan != "merged":
            return
        merged = ensure_merged(self.platform, version, actor=actor).version
        if not any(b.base_digest == merged.digest for b in backends):
            raise RegistryError(
                ErrorCode.FAILED_PRECONDITION,
                f"arm {arm.name!r} serves {version.ref} merged into its base ({plan.reason}): "
                f"that is {merged.ref}, and no backend serves it yet. Start one with "
                f"'evalhub backend {backend.kind} --base {merged.ref} --name {_merged_backend_name(merged)}' "
                f"(or POST /api/v1/backends with base {merged.ref!r}), then try again",
            )

    def _commit(
        self,
        session: Session,
        row: DeploymentRow,
        actor: str,
        action: str,
        before: Deployment | None,
    ) -> Deployment:
        row.updated_at = utcnow()
        session.add(row)
        session.flush()
        after = _entity(row)
        self.platform.events.record(
            session,
            Mutation(
                actor=actor,
                action=action,
                resource=f"deployments/{row.name}",
                before=before.model_dump(mode="json") if before else None,
                after=after.model_dump(mode="json"),
            ),
        )
        session.commit()
        return after


def _merged_backend_name(merged: ModelVersion) -> str:
    return f"{merged.model}-{merged.version}"


def _start_rollout(arms: list[dict[str, Any]], body: RolloutAction) -> dict[str, Any]:
    if len(arms) < 2:
        raise invalid("a rollout needs a control arm and a candidate arm")
    control = body.control or arms[0]["name"]
    candidate = body.candidate or next(a["name"] for a in arms if a["name"] != control)
    names = {arm["name"] for arm in arms}
    if control not in names or candidate not in names or control == candidate:
        raise invalid(f"control and candidate must be two different arms of {sorted(names)}")
    steps = body.steps if body.steps is not None else [5, 25, 50, 100]
    if any(not 0 < step <= 100 for step in steps) or steps != sorted(steps):
        raise invalid(f"rollout steps must rise within (0, 100], got {steps}")
    if body.analysis is not None and steps[-1] != 100:
        raise invalid(
            f"a rollout under analysis ends at 100 (the candidate takes over), not {steps[-1]}"
        )
    return {
        "control": control,
        "candidate": candidate,
        "steps": steps,
        "index": 0,
        "status": "running",
        "analysis": body.analysis.model_dump(mode="json") if body.analysis else None,
    }


def _weigh(arms: list[dict[str, Any]], control: str, candidate: str, weight: float) -> None:
    """Candidate gets `weight`, control the rest; other arms go to zero."""
    for arm in arms:
        arm["weight"] = weight if arm["name"] == candidate else 0.0
        if arm["name"] == control:
            arm["weight"] = 100.0 - weight


def _set_arms(row: DeploymentRow, arms: list[dict[str, Any]]) -> None:
    row.previous_arms = [dict(arm) for arm in row.arms]
    row.arms = arms
    row.revision += 1


def _find(session: Session, name: str, *, lock: bool = False) -> DeploymentRow | None:
    query = select(DeploymentRow).where(DeploymentRow.name == name)
    if lock:
        query = query.with_for_update()
    return session.exec(query).first()


def _get(session: Session, name: str, *, lock: bool = False) -> DeploymentRow:
    row = _find(session, name, lock=lock)
    if row is None:
        raise not_found(f"deployment {name!r} does not exist")
    return row


def _entity(row: DeploymentRow) -> Deployment:
    return Deployment(
        name=row.name,
        backend=row.backend,
        sticky=row.sticky,
        failover=row.failover,
        arms=[Arm(**arm) for arm in row.arms],
        rollout=Rollout(**row.rollout) if row.rollout else None,
        monitoring=Monitoring(**row.monitoring) if row.monitoring else None,
        revision=row.revision,
        previous_arms=[Arm(**arm) for arm in row.previous_arms] if row.previous_arms else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        created_by=row.created_by,
    )
