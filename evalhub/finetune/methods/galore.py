"""GaLore: full-parameter training whose Adam moments live in a low-rank projection of the gradient.

Every weight trains (the result is a full model), but the 2-D weights of the chosen linear layers keep
optimizer state of size rank x max(m, n) instead of 2 x m x n.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evalhub.finetune.methods.registry import register_method
from evalhub.finetune.methods.targets import check_target_modules, resolve_target_modules


class GaloreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(default=128, gt=0, description="Rank of the gradient projection.")
    update_interval: int = Field(
        default=200, gt=0, description="Steps between recomputing the projection (SVD of the grad)."
    )
    scale: float = Field(default=0.25, gt=0, description="Factor on the projected-back update.")
    target_modules: str | list[str] = Field(
        default="all-linear",
        description="Layers whose weights get projected moments: 'attention', 'all-linear' or names.",
    )

    @field_validator("target_modules")
    @classmethod
    def _known_targets(cls, value: str | list[str]) -> str | list[str]:
        return check_target_modules(value)


def apply_galore(model: Any, options: GaloreOptions) -> Any:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def galore_optimizer(model: Any, options: GaloreOptions, *, lr: float, weight_decay: float) -> Any:
    """Projected AdamW for targeted 2-D weights, plain AdamW (same class, no rank) for the rest."""
    from evalhub.finetune.galore_optim import GaLoreAdamW

    targets = set(resolve_target_modules(model, options.target_modules))
    projected: list[Any] = []
    regular: list[Any] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        module_name = name.rsplit(".", 2)[-2]  # "model.layers.0.self_attn.q_proj.weight" -> q_proj
        is_target = parameter.dim() == 2 and module_name in targets and name.endswith(".weight")
        (projected if is_target else regular).append(parameter)
    groups: list[dict[str, Any]] = [
        {
            "params": projected,
            "rank": options.rank,
            "update_interval": options.update_interval,
            "scale": options.scale,
        },
        {"params": regular, "rank": None},
    ]
    return GaLoreAdamW(
        [group for group in groups if group["params"]], lr=lr, weight_decay=weight_decay
    )


register_method(
    "galore",
    options_type=GaloreOptions,
    apply=apply_galore,
    output="model",
    description="Full training with low-rank projected Adam state (GaLore); saves a full model.",
    make_optimizer=galore_optimizer,
)
