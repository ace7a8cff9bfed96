"""LoRA: low-rank adapters on chosen linear layers, saved as a PEFT adapter directory.

Defaults are chosen so vLLM can hot-load the adapter: no `modules_to_save` (vLLM refuses lm_head
there), and the output head adapted as an ordinary LoRA target instead, which is also what lets a
small base learn a new output vocabulary quickly.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evalhub.finetune.methods.registry import register_method
from evalhub.finetune.methods.targets import check_target_modules, resolve_target_modules


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(default=16, gt=0, le=1024, description="Rank r of the update B @ A.")
    alpha: float | None = Field(
        default=None,
        gt=0,
        description="Scaling numerator (update scaled by alpha/r); 2*rank if unset.",
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field(
        default="all-linear",
        description="'attention' (q_proj, v_proj), 'all-linear', or a list of module names.",
    )
    include_lm_head: bool = Field(
        default=True,
        description="Adapt the output head (lm_head) as a LoRA target too; vLLM can load it.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full and stored in the adapter; vLLM refuses such adapters.",
    )

    @field_validator("target_modules")
    @classmethod
    def _known_targets(cls, value: str | list[str]) -> str | list[str]:
        return check_target_modules(value)

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank


def peft_lora_config(model: Any, options: LoraOptions, *, use_dora: bool = False) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=options.rank,
        lora_alpha=options.lora_alpha,  # type: ignore[arg-type]  # peft says int; it scales by alpha / r as a float
        lora_dropout=options.dropout,
        target_modules=resolve_target_modules(
            model, options.target_modules, options.include_lm_head
        ),
        modules_to_save=list(options.modules_to_save) or None,
        use_dora=use_dora,
        task_type="CAUSAL_LM",
    )


def apply_lora(model: Any, options: LoraOptions) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, peft_lora_config(model, options))


register_method(
    "lora",
    options_type=LoraOptions,
    apply=apply_lora,
    output="adapter",
    description="Low-rank adapters (default: all linear layers and lm_head, rank 16).",
)
