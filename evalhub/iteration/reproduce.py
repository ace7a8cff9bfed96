"""Reproduce a registered fine-tuned version: retrain it from its lineage, compare the digests.

`submit` reads what the registry recorded for the version (base and its digest, the training
dataset and its digest, method, the whole train config, seed, the checkpoint evaluation that
selected the registered step, code version and environment), applies the caller's overrides
("what if I retrain with seed 1") and queues a "reproduce" job; bad input is refused before
anything is stored. The job trains through the fine-tuning job's own path
(`evalhub.finetune.handler.train`) into its own directory under EVALHUB_HOME/jobs, scoring
checkpoints on the same suite when the version was selected by one, and registers nothing: its
result is a report of the recorded and reproduced digests, what differs, and the metrics side by
side. On CPU, with the same code, threads and libraries, the files are bit-identical.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import Session

from evalhub.finetune.config import TrainConfig
from evalhub.finetune.errors import problems
from evalhub.finetune.handler import LIBRARIES, code_version, train
from evalhub.finetune.methods import MethodError
from evalhub.finetune.service import total_steps
from evalhub.iteration.checkpoints import CheckpointScorer
from evalhub.jobs.queue import Job, JobEvent, JobStatus, new_job_id
from evalhub.jobs.worker import JobContext
from evalhub.platform import Platform
from registry.artifacts import TreeManifest, compute_tree
from registry.db import writer
from registry.entities import ModelKind, ModelVersion, Mutation
from registry.errors import ErrorCode, RegistryError, invalid

KIND = "reproduce"
# Options that name what is trained rather than how: a different method is another model.
NOT_OVERRIDABLE = ("method", "method_options", "device")
OVERRIDABLE = tuple(name for name in TrainConfig.model_fields if name not in NOT_OVERRIDABLE)
Scalar = bool | int | float | str | None


class ReproduceRequest(BaseModel):
    """What to change from the recorded recipe; empty reproduces it as recorded."""

    model_config = ConfigDict(extra="forbid")

    overrides: dict[str, Scalar] = Field(
        default_factory=dict,
        max_length=32,
        description=(
            'Training options to change, e.g. {"seed": 1}: seed, learning_rate, max_steps, '
            "batch_size, ... (any train_config field but method and device), or "
            "method_options.NAME (e.g. method_options.rank)."
        ),
    )


class Difference(BaseModel):
    """One thing the reproduction did not have as recorded, and why."""

    name: str
    recorded: Any
    reproduced: Any
    cause: Literal["override", "code", "environment", "inputs"]


class MetricPair(BaseModel):
    name: str
    recorded: float | int | None
    reproduced: float | int | None


class ReproductionReport(BaseModel):
    version: str
    training_job: str
    recorded_digest: str
    reproduced_digest: str
    identical: bool = Field(description="whether the retrained files are bit-identical")
    differing_files: list[str] = Field(
        default_factory=list, description="files whose bytes differ, or that one side lacks"
    )
    differences: list[Difference]
    metrics: list[MetricPair] = Field(description="the recorded and reproduced metrics")
    overrides: dict[str, Scalar]
    directory: str = Field(description="where the reproduced model files are (not registered)")
    seconds: float


class Reproduction(BaseModel):
    """A reproduce job as the API shows it."""

    id: str
    status: JobStatus
    version: str
    training_job: str
    overrides: dict[str, Scalar]
    total_steps: int
    checkpoint_eval: bool
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    report: ReproductionReport | None


# -- submitting --------------------------------------------------------------------------------


def submit(
    platform: Platform,
    ref: str,
    request: ReproduceRequest | None = None,
    *,
    actor: str = "",
) -> Reproduction:
    """Checks that `ref` can be retrained and queues the job; refuses (and stores nothing) when
    it is not a version trained by a job, or the overrides are not valid training options."""
    request = request or ReproduceRequest()
    version = platform.registry.resolve(ref)
    recorded = recorded_recipe(platform, version)
    config = apply_overrides(recorded["train_config"], request.overrides)
    plan = recorded["checkpoint_eval"]
    if plan is not None and config.checkpoint_every:
        every = plan.get("every") or config.checkpoint_every
        if every % config.checkpoint_every:
            raise invalid(
                f"the version's checkpoints were scored every {every} steps, which must be a "
                f"multiple of checkpoint_every ({config.checkpoint_every})"
            )
    rows = platform.registry.resolve_dataset(recorded["train_dataset"]).row_count
    job_id = new_job_id(KIND)
    payload = {
        "version": version.ref,
        "overrides": request.overrides,
        "recorded": recorded,
        # What the fine-tuning job's training path reads (see evalhub.finetune.handler.train).
        "base": recorded["base"],
        "train_dataset": recorded["train_dataset"],
        "validation_dataset": recorded["validation_dataset"],
        "train_config": config.model_dump(mode="json"),
        "seed": config.seed,
        "total_steps": total_steps(config, rows),
        "eval": plan,
        "output_kind": recorded["output_kind"],
        "fine_tuned_model": f"reproduce:{version.ref}:{job_id}",
    }
    changes = "".join(f", {key}={value}" for key, value in request.overrides.items())
    job = platform.jobs.submit(
        KIND,
        payload,
        actor=actor,
        job_id=job_id,
        message=f"Reproducing {version.ref} as trained by {recorded['training_job']}{changes}",
    )
    with Session(writer(platform.engine)) as session:
        platform.events.record(
            session,
            Mutation(
                actor=actor,
                action="reproduction.create",
                resource=f"reproductions/{job_id}",
                after={"version": version.ref, "overrides": request.overrides},
            ),
        )
        session.commit()
    return view(job)


def recorded_recipe(platform: Platform, version: ModelVersion) -> dict[str, Any]:
    """What the registry recorded about how `version` was trained; a clear 400 when it cannot
    be retrained. Versions registered before the lineage held the environment and the
    checkpoint evaluation fall back to the tags and the training job's payload."""
    hyper = version.hyperparameters
    if not version.training_job:
        if version.kind is ModelKind.BASE:
            raise invalid(
                f"{version.ref} is a base model version, not a fine-tuned one: nothing trained it "
                "here. Reproduce a version a fine-tuning job registered, e.g. tiny-upper/1"
            )
        raise invalid(
            f"{version.ref} has no recorded training job (it was registered from a directory): "
            "its lineage does not say how to train it again"
        )
    if "train_config" not in hyper or not version.dataset:
        raise invalid(
            f"{version.ref}'s lineage has no train_config or training dataset: it was not "
            "registered by a fine-tuning job, so it cannot be retrained"
        )
    base = version.base or hyper.get("base")
    if not base:
        raise invalid(f"{version.ref}'s lineage does not name the base it was trained from")
    plan = hyper.get("checkpoint_eval")
    if "checkpoint_eval" not in hyper and version.metrics.get("selected_step") is not None:
        plan = _job_payload(platform, version.training_job).get("eval")
        if plan is None:
            raise RegistryError(
                ErrorCode.FAILED_PRECONDITION,
                f"{version.ref} is a checkpoint selected by a suite, but neither its lineage nor "
                f"its job {version.training_job} still holds the suite: the selection cannot be "
                "repeated",
            )
    try:
        base_digest = hyper.get("base_digest") or version.base_digest
        platform.registry.resolve(base)
        dataset = platform.registry.resolve_dataset(version.dataset)
    except RegistryError as error:
        if error.code is not ErrorCode.NOT_FOUND:
            raise
        raise RegistryError(
            ErrorCode.FAILED_PRECONDITION,
            f"{version.ref} cannot be retrained: {error.message}",
        ) from None
    return {
        "digest": version.digest,
        "training_job": version.training_job,
        "code_version": version.code_version,
        "seed": version.seed,
        "base": base,
        "base_digest": base_digest,
        "train_dataset": version.dataset,
        "train_dataset_digest": hyper.get("train_dataset_digest") or dataset.digest,
        "validation_dataset": hyper.get("validation_dataset")
        or version.tags.get("validation_dataset"),
        "train_config": hyper["train_config"],
        "checkpoint_eval": plan,
        "environment": hyper.get("environment") or _environment_from_tags(version.tags),
        "output_kind": "adapter" if version.kind is ModelKind.ADAPTER else "base",
        "metrics": version.metrics,
    }


def _job_payload(platform: Platform, job_id: str) -> dict[str, Any]:
    try:
        return platform.jobs.get(job_id).payload
    except RegistryError as error:
        if error.code is ErrorCode.NOT_FOUND:
            return {}
        raise


def _environment_from_tags(tags: dict[str, str]) -> dict[str, Any]:
    libraries = {name: tags[f"lib.{name}"] for name in LIBRARIES if f"lib.{name}" in tags}
    return {"device": tags.get("device"), "libraries": libraries}


def apply_overrides(recorded: dict[str, Any], overrides: dict[str, Scalar]) -> TrainConfig:
    """The recorded train config with the overrides applied, validated as a job's would be."""
    changed = {**recorded, "method_options": dict(recorded.get("method_options") or {})}
    for key, value in overrides.items():
        if key.startswith("method_options.") and key != "method_options.":
            changed["method_options"][key.removeprefix("method_options.")] = value
        elif key in OVERRIDABLE:
            changed[key] = value
        else:
            raise invalid(
                f"cannot override {key!r}: give one of {', '.join(OVERRIDABLE)}, or "
                "method_options.NAME (e.g. method_options.rank)"
            )
    try:
        return TrainConfig.model_validate(changed)
    except MethodError as error:
        raise invalid(f"the overrides are not valid method options: {error}") from None
    except ValidationError as error:
        raise invalid(f"the overrides are not valid training options: {problems(error)}") from None


# -- the job -----------------------------------------------------------------------------------


def run_reproduction(context: JobContext, platform: Platform) -> dict[str, Any]:
    """The "reproduce" handler: train as recorded (the same checkpoint evaluation, so the same
    step is selected), then compare; the result is the report. Nothing is registered."""
    payload = context.job.payload
    recorded = payload["recorded"]
    config = payload["train_config"]
    context.event(
        f"Retraining {payload['version']}: {config['method']} on {payload['base']} with "
        f"{payload['train_dataset']}, {payload['total_steps']} steps, seed {payload['seed']}"
    )
    scorer = CheckpointScorer(platform, context.job) if payload.get("eval") else None
    started = time.perf_counter()
    trained = train(context, platform, scorer)
    reproduced = compute_tree(trained.directory)
    digest = reproduced.digest
    inputs = {
        "base_digest": platform.registry.resolve(payload["base"]).digest,
        "train_dataset_digest": platform.registry.resolve_dataset(payload["train_dataset"]).digest,
    }
    report = ReproductionReport(
        version=payload["version"],
        training_job=recorded["training_job"],
        recorded_digest=recorded["digest"],
        reproduced_digest=digest,
        identical=digest == recorded["digest"],
        differing_files=differing_files(platform, payload["version"], reproduced),
        differences=differences(payload, trained.environment, inputs),
        metrics=side_by_side(recorded["metrics"], trained.metrics),
        overrides=payload["overrides"],
        directory=str(trained.directory),
        seconds=round(time.perf_counter() - started, 3),
    )
    if report.identical:
        context.event(f"Reproduced {payload['version']} bit for bit: {digest}")
    else:
        named = ", ".join(difference.name for difference in report.differences) or "nothing"
        context.event(
            f"The reproduction differs from {payload['version']} in "
            f"{', '.join(report.differing_files)}: {digest}, not {recorded['digest']} (differs "
            f"from the record: {named})",
            level="warning",
        )
    return report.model_dump(mode="json")


def differing_files(platform: Platform, ref: str, reproduced: TreeManifest) -> list[str]:
    """The paths whose bytes differ between the registered files and the reproduced ones."""
    recorded = compute_tree(platform.registry.model_path(ref))
    if recorded.digest == reproduced.digest:
        return []
    before = {entry.path: entry.sha256 for entry in recorded.entries}
    after = {entry.path: entry.sha256 for entry in reproduced.entries}
    return sorted(path for path in {*before, *after} if before.get(path) != after.get(path))


def differences(
    payload: dict[str, Any], environment: dict[str, Any], inputs: dict[str, str]
) -> list[Difference]:
    """What the reproduction had otherwise than the recorded run; a value the record does not
    hold (a version registered before it was recorded) is not compared."""
    recorded = payload["recorded"]
    found: list[Difference] = []

    def compare(name: str, before: Any, after: Any, cause: Any) -> None:
        if before is not None and before != after:
            found.append(Difference(name=name, recorded=before, reproduced=after, cause=cause))

    compare("code_version", recorded["code_version"], code_version(), "code")
    before_env = recorded["environment"] or {}
    for key in ("device", "ranks", "torch_threads", "python"):
        compare(key, before_env.get(key), environment.get(key), "environment")
    libraries = environment.get("libraries", {})
    for name, value in (before_env.get("libraries") or {}).items():
        compare(f"lib.{name}", value, libraries.get(name), "environment")
    before_config, config = recorded["train_config"], payload["train_config"]
    for key in config:
        if key == "method_options":
            options = before_config.get(key) or {}
            for option, value in config[key].items():
                compare(f"method_options.{option}", options.get(option), value, "override")
        elif key != "device":
            compare(key, before_config.get(key), config[key], "override")
    compare("base_digest", recorded["base_digest"], inputs["base_digest"], "inputs")
    compare(
        "dataset_digest",
        recorded["train_dataset_digest"],
        inputs["train_dataset_digest"],
        "inputs",
    )
    return found


def side_by_side(recorded: dict[str, Any], reproduced: dict[str, Any]) -> list[MetricPair]:
    """Every number either run measured, and each scored checkpoint's value on the suite."""
    pairs = []
    for name in dict.fromkeys([*recorded, *reproduced]):
        before, after = recorded.get(name), reproduced.get(name)
        if _number(before) or _number(after):
            pairs.append(
                MetricPair(
                    name=name,
                    recorded=before if _number(before) else None,
                    reproduced=after if _number(after) else None,
                )
            )
    scored_before = {e["step"]: e for e in recorded.get("checkpoint_evals") or []}
    scored_after = {e["step"]: e for e in reproduced.get("checkpoint_evals") or []}
    for step in sorted({*scored_before, *scored_after}):
        before_entry, after_entry = scored_before.get(step, {}), scored_after.get(step, {})
        metrics = {**before_entry.get("metrics", {}), **after_entry.get("metrics", {})}
        for metric in metrics:
            pairs.append(
                MetricPair(
                    name=f"step {step} {metric}",
                    recorded=before_entry.get("metrics", {}).get(metric),
                    reproduced=after_entry.get("metrics", {}).get(metric),
                )
            )
    return pairs


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- reading -----------------------------------------------------------------------------------


def find(platform: Platform, job_id: str) -> Job:
    return platform.jobs.get(job_id, kind=KIND, noun="reproduction")


def view(job: Job) -> Reproduction:
    payload = job.payload
    report = None
    if job.status is JobStatus.SUCCEEDED and job.result:
        report = ReproductionReport.model_validate(job.result)
    return Reproduction(
        id=job.id,
        status=job.status,
        version=payload["version"],
        training_job=payload["recorded"]["training_job"],
        overrides=payload["overrides"],
        total_steps=payload["total_steps"],
        checkpoint_eval=payload.get("eval") is not None,
        created_at=job.created_at,
        finished_at=job.finished_at,
        error=job.error,
        report=report,
    )


def get(platform: Platform, job_id: str) -> Reproduction:
    return view(find(platform, job_id))


def events(platform: Platform, job_id: str, *, after: int | None = None) -> list[JobEvent]:
    find(platform, job_id)
    return platform.jobs.events(job_id, after=after)
