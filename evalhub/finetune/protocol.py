"""Request and response bodies of the OpenAI-compatible fine-tuning API, plus evalhub's options.

Requests follow OpenAI's `POST /v1/fine_tuning/jobs`; evalhub's own training options travel in one
extra body field, `evalhub` (with the openai client: `extra_body={"evalhub": {...}}`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evalhub.finetune.config import DistributedOptions
from evalhub.finetune.tokenize import OverflowPolicy

Auto = Literal["auto"]
SUFFIX_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
MAX_EPOCHS = 50
MAX_BATCH_SIZE = 256
MAX_LR_MULTIPLIER = 50.0
JobStatusName = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]


class Hyperparameters(BaseModel):
    """OpenAI's supervised hyperparameters; "auto" lets evalhub choose (see `service.resolve`)."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, value: int | str) -> int | str:
        if value != "auto" and not 1 <= int(value) <= MAX_EPOCHS:
            raise ValueError(f"must be 'auto' or an integer from 1 to {MAX_EPOCHS}, got {value}")
        return value

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int | str) -> int | str:
        if value != "auto" and not 1 <= int(value) <= MAX_BATCH_SIZE:
            raise ValueError(
                f"must be 'auto' or an integer from 1 to {MAX_BATCH_SIZE}, got {value}"
            )
        return value

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _multiplier(cls, value: float | str) -> float | str:
        if value != "auto" and not 0 < float(value) <= MAX_LR_MULTIPLIER:
            raise ValueError(
                f"must be 'auto' or a number in (0, {MAX_LR_MULTIPLIER:g}], got {value}"
            )
        return value


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class MethodSpec(BaseModel):
    """OpenAI's `method`; evalhub trains `supervised` only."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class CheckpointEval(BaseModel):
    """Score checkpoints on a held-out suite and register the best by `metric`, not the last."""

    model_config = ConfigDict(extra="forbid")

    suite: str = Field(min_length=1, description="The suite's YAML text (the CLI reads the file).")
    dataset: str | None = Field(
        default=None,
        description="A registry dataset (name or name/3) for the file the suite names; a suite "
        "that names a registry dataset needs none.",
    )
    metric: str = Field(min_length=1, description="The suite metric that picks the checkpoint.")
    every: int | None = Field(
        default=None, gt=0, le=1_000_000, description="Steps between scored checkpoints."
    )


class EvalhubOptions(BaseModel):
    """evalhub's training options. Keys not listed here are the method's own options, e.g.
    `rank`, `alpha`, `dropout`, `target_modules`, `include_lm_head` for lora/dora/qlora."""

    model_config = ConfigDict(extra="allow")

    method: str = Field(default="lora", description="full, lora, dora, qlora or galore")
    max_steps: int | None = Field(default=None, gt=0, le=1_000_000, description="Overrides epochs.")
    max_seq_len: int | None = Field(
        default=None, gt=0, description="Tokens per example; the base's context length if unset."
    )
    learning_rate: float | None = Field(
        default=None, gt=0, le=1, description="Absolute peak rate; overrides the multiplier."
    )
    warmup_ratio: float = Field(default=0.03, ge=0, le=1)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    grad_accum: int = Field(default=1, gt=0, le=1024)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    packing: bool = False
    gradient_checkpointing: bool = False
    on_overflow: OverflowPolicy = "truncate"
    checkpoint_every: int | None = Field(default=None, gt=0, description="Steps; total/4 if unset.")
    eval_every: int | None = Field(
        default=None, gt=0, description="Steps; as checkpoints if unset."
    )
    eval: CheckpointEval | None = Field(
        default=None, description="Score checkpoints on a suite; register the best."
    )
    distributed: DistributedOptions | None = Field(
        default=None,
        description="Train on several ranks of one machine under torchrun "
        '(`{"nproc_per_node": 2}`); batch_size stays the global batch.',
    )
    executor: Literal["local", "ray"] = Field(
        default="local",
        description="Where the training runs: in the worker that claims the job (local), or "
        "on the Ray cluster at the worker's EVALHUB_RAY_ADDRESS through Ray Train (ray).",
    )

    @property
    def method_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class FineTuneJobCreate(BaseModel):
    """The body of `POST /v1/fine_tuning/jobs`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A base model reference: name, name/3 or name@alias.")
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: MethodSpec | None = None
    suffix: str | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    evalhub: EvalhubOptions = Field(default_factory=EvalhubOptions)

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        if value and not SUFFIX_PATTERN.match(value):
            raise ValueError(
                "must be 1 to 40 lower-case letters, digits, '-' or '_', starting with a letter "
                f"or digit, got {value!r}"
            )
        return value or None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value and (
            len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())
        ):
            raise ValueError("at most 16 keys of up to 64 characters, values up to 512")
        return value

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("integrations (e.g. wandb) are not supported by evalhub")
        return value


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    """OpenAI's `fine_tuning.job`, with evalhub's details under `evalhub`."""

    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    model: str
    created_at: int
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    organization_id: str = "evalhub"
    result_files: list[str] = Field(default_factory=list)
    status: JobStatusName
    validation_file: str | None = None
    training_file: str
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    trained_tokens: int | None = None
    error: JobError | None = None
    seed: int
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    evalhub: dict[str, Any] = Field(default_factory=dict)


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] = "message"


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    full_valid_loss: float | None = None
    eval: dict[str, Any] | None = Field(
        default=None, description="evalhub: the checkpoint's scores on the job's suite, its run"
    )


class FineTuningJobCheckpoint(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
