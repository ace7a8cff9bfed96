"""DoRA: LoRA with a learned magnitude per output feature (peft `use_dora`).

vLLM cannot load DoRA adapters; the serving layer merges them into a full model instead.
"""

from __future__ import annotations

from typing import Any

from evalhub.finetune.methods.lora import LoraOptions, peft_lora_config
from evalhub.finetune.methods.registry import register_method


class DoraOptions(LoraOptions):
    """Same options as LoRA."""


def apply_dora(model: Any, options: DoraOptions) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, peft_lora_config(model, options, use_dora=True))


register_method(
    "dora",
    options_type=DoraOptions,
    apply=apply_dora,
    output="adapter",
    description="Weight-decomposed LoRA; served merged because vLLM refuses DoRA adapters.",
)
