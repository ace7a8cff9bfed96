"""Full fine-tuning: every weight trains; the result is a whole model directory."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evalhub.finetune.methods.registry import register_method


class FullOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    freeze_embeddings: bool = Field(
        default=False,
        description="Keep the input embeddings fixed (saves their gradient and optimizer memory).",
    )


def apply_full(model: Any, options: FullOptions) -> Any:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not (options.freeze_embeddings and "embed_tokens" in name))
    return model


register_method(
    "full",
    options_type=FullOptions,
    apply=apply_full,
    output="model",
    description="All weights trainable; saves a full model directory.",
)
