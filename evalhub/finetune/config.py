"""What a fine-tuning run is asked to do; validated before any model is loaded."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from evalhub.finetune.methods import get_method
from evalhub.finetune.tokenize import OverflowPolicy

Scheduler = Literal["cosine", "linear", "constant"]
MAX_NPROC_PER_NODE = 16  # the most GPUs one machine holds today is 8, some have 16


class DistributedOptions(BaseModel):
    """Train on several processes of one machine under torchrun: one rank per GPU (NCCL), or
    CPU processes (gloo). The recipe does not change: `batch_size` stays the global batch and
    each rank takes its share of every batch, so N ranks take the optimizer steps one process
    would (equal within float rounding; dropout draws its masks per rank)."""

    model_config = ConfigDict(extra="forbid")

    nproc_per_node: StrictInt = Field(
        ge=1,
        le=MAX_NPROC_PER_NODE,
        description=f"Ranks on this machine (one per GPU), 1 to {MAX_NPROC_PER_NODE}.",
    )


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = Field(default="lora", description="Registered method: full, lora, dora, ...")
    method_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the method (see its options model)."
    )
    epochs: int = Field(default=1, gt=0, description="Passes over the training examples.")
    max_steps: int | None = Field(
        default=None, gt=0, description="Optimizer steps to run; overrides epochs when set."
    )
    batch_size: int = Field(default=8, gt=0, description="Examples per forward pass.")
    grad_accum: int = Field(default=1, gt=0, description="Forward passes per optimizer step.")
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="Decoupled (AdamW) weight decay.")
    warmup_ratio: float = Field(
        default=0.03, ge=0, le=1, description="Fraction of steps with linear warm-up from 0."
    )
    scheduler: Scheduler = Field(default="cosine", description="Decay after warm-up.")
    max_grad_norm: float | None = Field(
        default=1.0, gt=0, description="Clip the gradient norm to this; None disables clipping."
    )
    max_seq_len: int = Field(default=512, gt=0, description="Longer examples are truncated.")
    on_overflow: OverflowPolicy = Field(
        default="truncate", description="What to do with longer examples: truncate, drop, error."
    )
    packing: bool = Field(
        default=False, description="Concatenate examples into max_seq_len sequences."
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward: less memory, more time."
    )
    bf16: bool = Field(default=True, description="bf16 autocast; only ever used on CUDA.")
    eval_every: int | None = Field(
        default=None, gt=0, description="Steps between validation losses (and at the end)."
    )
    checkpoint_every: int | None = Field(
        default=None, gt=0, description="Steps between resumable checkpoints."
    )
    seed: int = Field(default=0, description="Seeds data order, adapter init and dropout.")
    device: str | None = Field(default=None, description="torch device; cuda if available.")
    distributed: DistributedOptions | None = Field(
        default=None,
        description="Run under torchrun on several ranks of this machine: DDP for adapter "
        "methods, FSDP for full fine-tuning.",
    )

    @model_validator(mode="after")
    def _method_and_options(self) -> TrainConfig:
        method = get_method(self.method)
        self.method_options = method.parse_options(self.method_options).model_dump()
        if self.distributed is not None:
            ranks = self.distributed.nproc_per_node
            if method.make_optimizer is not None:
                raise ValueError(
                    f"method {self.method!r} cannot run distributed: its optimizer works on whole "
                    "weight matrices, which FSDP shards across ranks; run it on one process "
                    "(leave out distributed)"
                )
            if self.batch_size % ranks:
                raise ValueError(
                    f"batch_size {self.batch_size} must be a multiple of "
                    f"distributed.nproc_per_node {ranks}: each rank takes "
                    "batch_size / nproc_per_node examples of every batch"
                )
        return self
