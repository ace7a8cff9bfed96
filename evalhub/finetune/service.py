"""The fine-tuning service behind OpenAI's `/v1/fine_tuning/jobs`: create, list, cancel, inspect.

Everything that can refuse a job (model, files, data, hyperparameters, method options, names) is
checked before anything is stored, so a refused request leaves nothing behind. An accepted job
stores its files as registry dataset versions and queues a "fine_tune" job (see `handler.py`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from evalhub.finetune.config import TrainConfig
from evalhub.finetune.data import ValidationReport, validate_chat_file
from evalhub.finetune.errors import bad_param, missing, problems
from evalhub.finetune.files import file_path, get_file, timestamp
from evalhub.finetune.methods import MethodError, get_method
from evalhub.finetune.protocol import (
    CheckpointEval,
    CheckpointMetrics,
    FineTuneJobCreate,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCheckpointList,
    FineTuningJobEvent,
    FineTuningJobEventList,
    FineTuningJobList,
    Hyperparameters,
    JobError,
)
from evalhub.finetune.tables import FineTuneCheckpointRow
from evalhub.jobs.queue import Job, JobEvent, JobStatus, new_job_id
from evalhub.platform import Platform
from registry.db import writer
from registry.entities import ModelKind, ModelVersion, Mutation
from registry.errors import ErrorCode, RegistryError
from registry.names import check_name
from registry.paging import fetch_page

KIND = "fine_tune"
JOB_PREFIX = "ftjob"
ADAPTER_BASE_LR = 2e-4  # peak rate at learning_rate_multiplier 1 for lora, dora, qlora
FULL_BASE_LR = 2e-5  # for full and galore, which move every weight
AUTO_EPOCHS = 3
AUTO_BATCH_SIZE = 8
MAX_REPORTED_ISSUES = 10


# -- names -------------------------------------------------------------------------------------


def fine_tuned_model_id(base_name: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's shape, `ft:<base>:<suffix>:<job id>` (the suffix may be empty)."""
    return f"ft:{base_name}:{suffix or ''}:{job_id}"


def output_model_name(base_name: str, suffix: str | None) -> str:
    """The registered model that receives the result: `<base>-<suffix>`, or `<base>-ft`."""
    return f"{base_name}-{suffix or 'ft'}"


def resolve_fine_tuned_model(platform: Platform, model_id: str) -> str:
    """The registry version ref (e.g. `tiny-upper/1`) a succeeded job's `ft:` model id names."""
    return platform.registry.resolve_fine_tuned(model_id).ref


# -- creation ----------------------------------------------------------------------------------


def resolve_base(platform: Platform, model: str) -> ModelVersion:
    """A base model version from a reference: `name` (latest), `name/3` or `name@alias`."""
    try:
        version = platform.registry.resolve(model)
    except RegistryError as error:
        if error.code in (ErrorCode.NOT_FOUND, ErrorCode.INVALID_ARGUMENT):
            raise missing(
                "model", f"the model {model!r} does not exist or you do not have access to it "
                f"({error.message}); register a base model first, e.g. "
                "`evalhub models create-tiny tiny`",
            ) from None  # fmt: skip
        raise
    if version.kind is not ModelKind.BASE:
        raise bad_param(
            "model", f"{version.ref} is an adapter; fine-tune a base model version instead"
        )
    return version


@lru_cache(maxsize=8)
def _tokenizer(directory: str) -> Any:
    """The base's tokenizer; a base registered without one is a clear 400, not a crash."""
    from evalhub.finetune.loading import load_tokenizer

    try:
        return load_tokenizer(Path(directory))
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise bad_param(
            "model",
            "this base model has no usable tokenizer (tokenizer.json or tokenizer_config.json "
            f"beside config.json): {str(error).splitlines()[0][:200]}; register the model "
            "directory with its tokenizer files",
        ) from None


def context_length(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text())
    value = config.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def report_summary(label: str, report: ValidationReport) -> str:
    """One message with counts per error type and the first issues with their line numbers."""
    counts = ", ".join(f"{kind} x{count}" for kind, count in sorted(report.error_counts.items()))
    issues = "; ".join(
        f"{'line ' + str(issue.line) if issue.line is not None else 'file'}: {issue.type}: "
        f"{issue.message}"
        for issue in report.errors[:MAX_REPORTED_ISSUES]
    )
    more = len(report.errors) - MAX_REPORTED_ISSUES
    tail = f"; and {more} more" if more > 0 else ""
    return (
        f"{label} is not valid chat fine-tuning data ({report.n_examples} examples, "
        f"{len(report.errors)} errors: {counts}): {issues}{tail}. Check it with "
        "`evalhub finetune validate FILE --model MODEL`, fix it and upload it again."
    )


def check_data(
    platform: Platform, file_id: str, param: str, tokenizer: Any, max_tokens: int
) -> tuple[Path, ValidationReport, str]:
    entry = get_file(platform, file_id, param=param)
    if entry.purpose != "fine-tune":
        raise bad_param(param, f"file {file_id} has purpose {entry.purpose!r}, not 'fine-tune'")
    path = file_path(platform, file_id, param=param)
    label = f"{param} {file_id} ({entry.filename})"
    return path, check_chat_data(path, label, param, tokenizer, max_tokens), entry.filename


def check_chat_data(
    path: Path, label: str, param: str, tokenizer: Any, max_tokens: int
) -> ValidationReport:
    """The OpenAI checker's verdict on a chat JSONL file; a 400 naming `param` when it fails."""
    try:
        report = validate_chat_file(path, tokenizer, max_tokens=max_tokens)
    except UnicodeDecodeError:
        raise bad_param(param, f"{label} is not UTF-8 text (JSONL)") from None
    errors = report.errors
    if param.startswith("validation"):  # held-out data has no minimum size
        errors = [issue for issue in errors if issue.type != "too_few_examples"]
    if errors:
        report = report.model_copy(
            update={"errors": errors, "error_counts": _counts([e.type for e in errors])}
        )
        raise bad_param(param, report_summary(label, report))
    return report


def _counts(kinds: list[str]) -> dict[str, int]:
    return {kind: kinds.count(kind) for kind in sorted(set(kinds))}


def resolve_hyperparameters(given: Hyperparameters, method: str, n_examples: int) -> dict[str, Any]:
    """OpenAI's three knobs with "auto" replaced by evalhub's choices."""
    base_lr = FULL_BASE_LR if get_method(method).output == "model" else ADAPTER_BASE_LR
    return {
        "n_epochs": AUTO_EPOCHS if given.n_epochs == "auto" else int(given.n_epochs),
        "batch_size": (
            min(AUTO_BATCH_SIZE, n_examples) if given.batch_size == "auto" else given.batch_size
        ),
        "learning_rate_multiplier": (
            1.0 if given.learning_rate_multiplier == "auto" else given.learning_rate_multiplier
        ),
        "base_learning_rate": base_lr,
    }


def _hyperparameters(request: FineTuneJobCreate) -> Hyperparameters:
    method = request.method
    if method is not None and method.type != "supervised":
        raise bad_param(
            "method.type", f"evalhub trains 'supervised' jobs only, not {method.type!r}"
        )
    in_method = method.supervised.hyperparameters if method and method.supervised else None
    given_twice = in_method is not None and request.hyperparameters is not None
    if given_twice and in_method != request.hyperparameters:
        raise bad_param(
            "hyperparameters",
            "give hyperparameters once: in method.supervised.hyperparameters (preferred) or "
            "in the deprecated top-level hyperparameters",
        )
    return in_method or request.hyperparameters or Hyperparameters()


def _train_config(
    request: FineTuneJobCreate, hyper: dict[str, Any], seed: int, max_seq_len: int, n: int
) -> TrainConfig:
    options = request.evalhub
    batch_size = int(hyper["batch_size"])
    steps_per_epoch = math.ceil(math.ceil(n / batch_size) / options.grad_accum)
    total = options.max_steps or steps_per_epoch * int(hyper["n_epochs"])
    checkpoint_every = options.checkpoint_every or max(1, total // 4)
    if options.eval is not None:
        every = options.eval.every or checkpoint_every
        if options.checkpoint_every and every % options.checkpoint_every:
            raise bad_param(
                "evalhub.eval.every",
                f"checkpoints are scored as they are saved: every ({every}) must be a multiple "
                f"of checkpoint_every ({options.checkpoint_every})",
            )
        checkpoint_every = options.checkpoint_every or every
    learning_rate = options.learning_rate or (
        hyper["base_learning_rate"] * float(hyper["learning_rate_multiplier"])
    )
    try:
        return TrainConfig(
            method=options.method,
            method_options=options.method_options,
            epochs=int(hyper["n_epochs"]),
            max_steps=options.max_steps,
            batch_size=batch_size,
            grad_accum=options.grad_accum,
            learning_rate=learning_rate,
            weight_decay=options.weight_decay,
            warmup_ratio=options.warmup_ratio,
            scheduler=options.scheduler,
            max_grad_norm=options.max_grad_norm,
            max_seq_len=max_seq_len,
            on_overflow=options.on_overflow,
            packing=options.packing,
            gradient_checkpointing=options.gradient_checkpointing,
            eval_every=options.eval_every or checkpoint_every,
            checkpoint_every=checkpoint_every,
            seed=seed,
            distributed=options.distributed,
        )
    except MethodError as error:
        raise bad_param("evalhub.method", str(error)) from None
    except ValidationError as error:
        raise bad_param("evalhub", f"invalid training options: {problems(error)}") from None


def _check_output_model(platform: Platform, name: str, kind: ModelKind) -> None:
    try:
        check_name(name, "model")
    except RegistryError as error:
        raise bad_param("suffix", f"the result would be named {name!r}: {error.message}") from None
    try:
        existing = platform.registry.get_model(name)
    except RegistryError as error:
        if error.code is ErrorCode.NOT_FOUND:
            return
        raise
    if existing.kind is not kind:
        raise bad_param(
            "suffix",
            f"the result would be registered as {name!r}, which is a model of kind "
            f"{existing.kind.value!r}, not {kind.value!r}; choose another suffix",
        )


PlanEval = Callable[[CheckpointEval], dict[str, Any]]


@dataclass(frozen=True)
class RegisteredData:
    """Training data that is already a registry dataset version (an experiment's trials)."""

    ref: str
    path: Path
    filename: str


@dataclass(frozen=True)
class PreparedJob:
    """A job that passed every check; submitting it is the first write."""

    request: FineTuneJobCreate
    base: ModelVersion
    output_name: str
    output_kind: ModelKind
    train: tuple[Path, str] | RegisteredData
    validation: tuple[Path, str] | RegisteredData | None
    report: ValidationReport
    eval_plan: dict[str, Any] | None
    hyperparameters: dict[str, Any]
    config: TrainConfig


def create_job(
    platform: Platform,
    request: FineTuneJobCreate,
    *,
    actor: str = "",
    plan_eval: PlanEval | None = None,
) -> Job:
    """Validate everything, store the data as dataset versions, queue the job.

    `plan_eval` checks a checkpoint evaluation's suite and pins what it runs (the suite digest,
    the dataset version); evaluation lives above fine-tuning, so the caller supplies it.
    """
    return submit_job(platform, prepare_job(platform, request, plan_eval=plan_eval), actor=actor)


def prepare_job(
    platform: Platform,
    request: FineTuneJobCreate,
    *,
    plan_eval: PlanEval | None = None,
    train: RegisteredData | None = None,
    validation: RegisteredData | None = None,
) -> PreparedJob:
    """Every check of job creation, writing nothing. `train` and `validation` stand in for the
    request's files when the data is a registered dataset version already."""
    base = resolve_base(platform, request.model)
    hyper_request = _hyperparameters(request)
    try:
        method = get_method(request.evalhub.method)
    except MethodError as error:
        raise bad_param("evalhub.method", str(error)) from None
    try:  # qlora refuses here on a machine without CUDA, before anything is stored
        method.parse_options(request.evalhub.method_options)
    except MethodError as error:
        raise bad_param("evalhub", str(error)) from None
    output_kind = ModelKind.ADAPTER if method.output == "adapter" else ModelKind.BASE
    output_name = output_model_name(base.model, request.suffix)
    _check_output_model(platform, output_name, output_kind)

    base_dir = platform.registry.model_path(base.ref)
    context = context_length(base_dir)
    max_seq_len = request.evalhub.max_seq_len or context or 2048
    if context is not None and max_seq_len > context:
        raise bad_param(
            "evalhub.max_seq_len",
            f"max_seq_len {max_seq_len} exceeds {base.ref}'s context {context}",
        )
    tokenizer = _tokenizer(str(base_dir))
    train_data: tuple[Path, str] | RegisteredData
    if train is not None:
        label = f"training dataset {train.ref}"
        report = check_chat_data(train.path, label, "training_file", tokenizer, max_seq_len)
        train_data = train
    else:
        path, report, filename = check_data(
            platform, request.training_file, "training_file", tokenizer, max_seq_len
        )
        train_data = (path, filename)
    val_data: tuple[Path, str] | RegisteredData | None = validation
    if validation is not None:
        label = f"validation dataset {validation.ref}"
        check_chat_data(validation.path, label, "validation_file", tokenizer, max_seq_len)
    elif request.validation_file:
        val_path, _, val_name = check_data(
            platform, request.validation_file, "validation_file", tokenizer, max_seq_len
        )
        val_data = (val_path, val_name)
    eval_plan = None
    if request.evalhub.eval is not None:
        if plan_eval is None:
            raise bad_param("evalhub.eval", "this server cannot score checkpoints")
        eval_plan = plan_eval(request.evalhub.eval)
    seed = request.seed if request.seed is not None else 0
    hyper = resolve_hyperparameters(hyper_request, method.name, report.n_examples)
    config = _train_config(request, hyper, seed, max_seq_len, report.n_examples)
    return PreparedJob(
        request=request,
        base=base,
        output_name=output_name,
        output_kind=output_kind,
        train=train_data,
        validation=val_data,
        report=report,
        eval_plan=eval_plan,
        hyperparameters=hyper,
        config=config,
    )


def _dataset_ref(
    platform: Platform, data: tuple[Path, str] | RegisteredData, name: str, split: str, actor: str
) -> str:
    if isinstance(data, RegisteredData):
        return data.ref
    path, filename = data
    version, _ = platform.registry.add_dataset_version(
        name, path, format="chat", split=split, filename=filename, create=True, actor=actor
    )
    return version.ref


def submit_job(
    platform: Platform,
    prepared: PreparedJob,
    *,
    actor: str = "",
    job_id: str | None = None,
    links: dict[str, Any] | None = None,
) -> Job:
    """Stores the data as dataset versions (unless they are already) and queues the job.
    `links` are recorded in the payload (an experiment's trial names its experiment)."""
    request, config, report = prepared.request, prepared.config, prepared.report
    job_id = job_id or new_job_id(JOB_PREFIX)
    output_name = prepared.output_name
    train_ref = _dataset_ref(platform, prepared.train, f"{output_name}-train", "train", actor)
    val_ref = None
    if prepared.validation is not None:
        val_ref = _dataset_ref(
            platform, prepared.validation, f"{output_name}-validation", "validation", actor
        )
    payload = {
        "request": request.model_dump(mode="json", exclude_none=True),
        "model": request.model,
        "base": prepared.base.ref,
        "base_name": prepared.base.model,
        "training_file": request.training_file,
        "validation_file": request.validation_file,
        "train_dataset": train_ref,
        "validation_dataset": val_ref,
        "suffix": request.suffix,
        "seed": config.seed,
        "hyperparameters": prepared.hyperparameters,
        "train_config": config.model_dump(mode="json"),
        "total_steps": total_steps(config, report.n_examples),
        "output_model": output_name,
        "output_kind": prepared.output_kind.value,
        "fine_tuned_model": fine_tuned_model_id(prepared.base.model, request.suffix, job_id),
        "metadata": request.metadata,
        "eval": prepared.eval_plan,
        "executor": request.evalhub.executor,
        **(links or {}),
    }
    job = platform.jobs.submit(
        KIND, payload, actor=actor, job_id=job_id,
        message=f"Created fine-tuning job: {job_id}",
    )  # fmt: skip
    stats = report.token_stats
    tokens = f", {stats.total} tokens" if stats else ""
    platform.jobs.add_event(job_id, f"Validated training file {request.training_file}: "
                            f"{report.n_examples} examples{tokens}")  # fmt: skip
    for issue in report.warnings[:MAX_REPORTED_ISSUES]:
        platform.jobs.add_event(
            job_id, f"training_file line {issue.line}: {issue.message}", level="warning"
        )
    platform.jobs.add_event(job_id, "Files validated, moving job to queued state")
    _audit(platform, actor, "fine_tuning_job.create", job_id, payload)
    return job


def total_steps(config: TrainConfig, n_examples: int) -> int:
    """Optimizer steps of a run over `n_examples` rows (what a job's progress counts to)."""
    if config.max_steps is not None:
        return config.max_steps
    micro_batches = math.ceil(n_examples / config.batch_size) * config.epochs
    return math.ceil(micro_batches / config.grad_accum)


def _audit(platform: Platform, actor: str, action: str, job_id: str, after: dict) -> None:
    with Session(writer(platform.engine)) as session:
        resource = f"fine_tuning/jobs/{job_id}"
        platform.events.record(
            session, Mutation(actor=actor, action=action, resource=resource, after=after)
        )
        session.commit()


# -- reading -----------------------------------------------------------------------------------


def find_job(platform: Platform, job_id: str, param: str = "fine_tuning_job_id") -> Job:
    """The fine-tuning job `job_id`; a 404 naming `param` when there is none."""
    try:
        return platform.jobs.get(job_id, kind=KIND, noun="fine-tuning job")
    except RegistryError as error:
        if error.code is ErrorCode.NOT_FOUND:
            raise missing(param, error.message) from None
        raise


def _eval_view(plan: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, Any] | None:
    if not plan:
        return None
    shown = {key: plan[key] for key in ("suite_name", "metric", "every", "dataset_version")}
    return shown | {key: result[key] for key in ("selected", "checkpoints") if key in result}


def job_view(job: Job) -> FineTuningJob:
    payload = job.payload
    result = job.result or {}
    hyper = {
        key: payload["hyperparameters"][key]
        for key in ("n_epochs", "batch_size", "learning_rate_multiplier")
    }
    error = None
    if job.status is JobStatus.FAILED:
        error = JobError(code="training_failed", message=job.error or "the job failed")
    config = payload["train_config"]
    return FineTuningJob(
        id=job.id,
        model=payload["model"],
        created_at=timestamp(job.created_at) or 0,
        finished_at=timestamp(job.finished_at),
        fine_tuned_model=result.get("fine_tuned_model"),
        status=job.status.value,
        validation_file=payload.get("validation_file"),
        training_file=payload["training_file"],
        hyperparameters=hyper,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
        trained_tokens=result.get("trained_tokens"),
        error=error,
        seed=payload["seed"],
        metadata=payload.get("metadata"),
        user_provided_suffix=payload.get("suffix"),
        evalhub={
            "base": payload["base"],
            "method": config["method"],
            "method_options": config["method_options"],
            "learning_rate": config["learning_rate"],
            "total_steps": payload["total_steps"],
            "train_dataset": payload["train_dataset"],
            "validation_dataset": payload.get("validation_dataset"),
            "output_model": payload["output_model"],
            "registered_version": result.get("version_ref"),
            "metrics": result.get("metrics"),
            "checkpoint_eval": _eval_view(payload.get("eval"), result),
            "distributed": config.get("distributed"),
            "executor": payload.get("executor", "local"),
            "cancel_requested": job.cancel_requested,
            "attempts": job.attempts,
        },
    )


def get_job(platform: Platform, job_id: str) -> FineTuningJob:
    return job_view(find_job(platform, job_id))


def list_jobs(
    platform: Platform, *, after: str | None = None, limit: int = 20
) -> FineTuningJobList:
    """Newest first; `after` is the last job id of the previous page."""
    token = None
    if after:
        token = platform.jobs.page_token_after(find_job(platform, after, param="after").id)
    page = platform.jobs.search(kind=KIND, limit=limit, page_token=token)
    return FineTuningJobList(
        data=[job_view(job) for job in page.data], has_more=page.next_page_token is not None
    )


def cancel_job(platform: Platform, job_id: str, *, actor: str = "") -> FineTuningJob:
    find_job(platform, job_id)
    job = platform.jobs.cancel(job_id, actor=actor)
    _audit(platform, actor, "fine_tuning_job.cancel", job_id, {"status": job.status.value})
    return job_view(job)


_LEVELS = {"warning": "warn", "warn": "warn", "error": "error"}


def event_view(row: JobEvent) -> FineTuningJobEvent:
    data = dict(row.data) if row.data else None
    kind = "metrics" if data and data.pop("type", None) == "metrics" else "message"
    return FineTuningJobEvent(
        id=f"ftevent-{row.id}",
        created_at=timestamp(row.created_at) or 0,
        level=_LEVELS.get(row.level, "info"),
        message=row.message,
        data=data,
        type=kind,
    )


def list_events(
    platform: Platform, job_id: str, *, after: str | None = None, limit: int = 20
) -> FineTuningJobEventList:
    """Newest first, like OpenAI; `after` is the last event id of the previous page."""
    find_job(platform, job_id)
    before = None
    if after:
        try:
            before = int(after.removeprefix("ftevent-"))
        except ValueError:
            raise bad_param("after", f"{after!r} is not an event id (ftevent-N)") from None
    rows, more = platform.jobs.latest_events(job_id, before=before, limit=limit)
    return FineTuningJobEventList(data=[event_view(row) for row in rows], has_more=more)


def checkpoint_model_id(fine_tuned_model: str, step: int) -> str:
    return f"{fine_tuned_model}:ckpt-step-{step}"


def list_checkpoints(
    platform: Platform, job_id: str, *, after: str | None = None, limit: int = 10
) -> FineTuningJobCheckpointList:
    """Newest first; `after` is the last checkpoint id of the previous page."""
    job = find_job(platform, job_id)
    query = select(FineTuneCheckpointRow).where(FineTuneCheckpointRow.job_id == job_id)
    with Session(platform.engine) as session:
        if after:
            cursor = session.get(FineTuneCheckpointRow, after)
            if cursor is None or cursor.job_id != job_id:
                raise bad_param("after", f"no checkpoint {after!r} of job {job_id}")
            query = query.where(col(FineTuneCheckpointRow.step) < cursor.step)
        ordering = col(FineTuneCheckpointRow.step).desc()
        rows, more = fetch_page(session, query.order_by(ordering), limit)
    data = [
        FineTuningJobCheckpoint(
            id=row.id,
            created_at=timestamp(row.created_at) or 0,
            fine_tuned_model_checkpoint=checkpoint_model_id(
                job.payload["fine_tuned_model"], row.step
            ),
            fine_tuning_job_id=job_id,
            step_number=row.step,
            metrics=CheckpointMetrics.model_validate(row.metrics),
        )
        for row in rows
    ]
    return FineTuningJobCheckpointList(
        data=data,
        has_more=more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
