"""What a fine-tuning run is asked to do; validated before any model is loaded."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from evalhub.finetune.methods import get_method
from evalhub.finetune.tokenize import OverflowPolicy

Scheduler = Literal["cosine", "linear", "constant"]


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

    @model_validator(mode="after")
    def _method_and_options(self) -> TrainConfig:
        method = get_method(self.method)
        self.method_options = method.parse_options(self.method_options).model_dump()
        return self
