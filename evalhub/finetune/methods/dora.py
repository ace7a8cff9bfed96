"""DoRA: LoRA with a learned magnitude per output feature (peft `use_dora`).

The local backend serves DoRA adapters as they are. vLLM refuses to load them (HTTP 500 from
`/v1/load_lora_adapter`); the serve plan (`evalhub.serving.serve_plan`) serves them there merged
into their base instead.
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
    description="Weight-decomposed LoRA; the local backend serves it, vLLM serves it merged.",
)
