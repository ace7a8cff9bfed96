"""The fine-tuning service behind OpenAI's `/v1/fine_tuning/jobs`: create, list, cancel, inspect.

Everything that can refuse a job (model, files, data, hyperparameters, method options, names) is
checked before anything is stored, so a refused request leaves nothing behind. An accepted job
stores its files as registry dataset versions and queues a "fine_tune" job (see `handler.py`).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from evalhub.finetune.config import TrainConfig
from evalhub.finetune.data import ValidationReport, validate_chat_file
from evalhub.finetune.errors import bad_param, missing
from evalhub.finetune.files import file_path, get_file, timestamp
from evalhub.finetune.methods import MethodError, get_method
from evalhub.finetune.protocol import (
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
    try:
        report = validate_chat_file(path, tokenizer, max_tokens=max_tokens)
    except UnicodeDecodeError:
        raise bad_param(param, f"{param} {file_id} is not UTF-8 text (JSONL)") from None
    errors = report.errors
    if param == "validation_file":  # held-out data has no minimum size
        errors = [issue for issue in errors if issue.type != "too_few_examples"]
    if errors:
        report = report.model_copy(
            update={"errors": errors, "error_counts": _counts([e.type for e in errors])}
        )
        raise bad_param(param, report_summary(f"{param} {file_id} ({entry.filename})", report))
    return path, report, entry.filename


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
        )
    except MethodError as error:
        raise bad_param("evalhub.method", str(error)) from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        raise bad_param("evalhub", f"invalid training options: {problems}") from None


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


def create_job(platform: Platform, request: FineTuneJobCreate, *, actor: str = "") -> Job:
    """Validate everything, store the data as dataset versions, queue the job."""
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
    train_path, train_report, train_name = check_data(
        platform, request.training_file, "training_file", tokenizer, max_seq_len
    )
    val_path = val_name = None
    if request.validation_file:
        val_path, _, val_name = check_data(
            platform, request.validation_file, "validation_file", tokenizer, max_seq_len
        )
    seed = request.seed if request.seed is not None else 0
    hyper = resolve_hyperparameters(hyper_request, method.name, train_report.n_examples)
    config = _train_config(request, hyper, seed, max_seq_len, train_report.n_examples)

    job_id = new_job_id(JOB_PREFIX)
    registry = platform.registry
    train_dataset, _ = registry.add_dataset_version(
        f"{output_name}-train", train_path, format="chat", split="train",
        filename=train_name, create=True, actor=actor,
    )  # fmt: skip
    val_dataset = None
    if val_path is not None:
        val_dataset, _ = registry.add_dataset_version(
            f"{output_name}-validation", val_path, format="chat", split="validation",
            filename=val_name, create=True, actor=actor,
        )  # fmt: skip
    payload = {
        "request": request.model_dump(mode="json", exclude_none=True),
        "model": request.model,
        "base": base.ref,
        "base_name": base.model,
        "training_file": request.training_file,
        "validation_file": request.validation_file,
        "train_dataset": train_dataset.ref,
        "validation_dataset": val_dataset.ref if val_dataset else None,
        "suffix": request.suffix,
        "seed": seed,
        "hyperparameters": hyper,
        "train_config": config.model_dump(mode="json"),
        "total_steps": _total_steps(config, train_report.n_examples),
        "output_model": output_name,
        "output_kind": output_kind.value,
        "fine_tuned_model": fine_tuned_model_id(base.model, request.suffix, job_id),
        "metadata": request.metadata,
    }
    job = platform.jobs.submit(
        KIND, payload, actor=actor, job_id=job_id,
        message=f"Created fine-tuning job: {job_id}",
    )  # fmt: skip
    stats = train_report.token_stats
    tokens = f", {stats.total} tokens" if stats else ""
    platform.jobs.add_event(job_id, f"Validated training file {request.training_file}: "
                            f"{train_report.n_examples} examples{tokens}")  # fmt: skip
    for issue in train_report.warnings[:MAX_REPORTED_ISSUES]:
        platform.jobs.add_event(
            job_id, f"training_file line {issue.line}: {issue.message}", level="warning"
        )
    platform.jobs.add_event(job_id, "Files validated, moving job to queued state")
    _audit(platform, actor, "fine_tuning_job.create", job_id, payload)
    return job


def _total_steps(config: TrainConfig, n_examples: int) -> int:
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
        job = platform.jobs.get(job_id)
    except RegistryError as error:
        if error.code is ErrorCode.NOT_FOUND:
            raise missing(param, f"no fine-tuning job {job_id!r}") from None
        raise
    if job.kind != KIND:
        raise missing(param, f"no fine-tuning job {job_id!r}")
    return job


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
