"""Which linear layers a method adapts: presets by name or explicit module names."""

from __future__ import annotations

from typing import Any

PRESETS = ("attention", "all-linear")
ATTENTION_MODULES = ("q_proj", "v_proj")
OUTPUT_HEAD = "lm_head"


def check_target_modules(value: str | list[str]) -> str | list[str]:
    """Refuse an unknown preset or an empty list at validation time, before a model is loaded."""
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(
                f"unknown preset {value!r}; use one of {', '.join(PRESETS)} or a list of module names"
            )
        return value
    if not value or any(not name.strip() for name in value):
        raise ValueError("give at least one module name, none of them empty")
    return value


def linear_module_names(model: Any) -> list[str]:
    """Last path component of every linear layer except the output head, sorted."""
    import torch

    names = {
        qualified.rsplit(".", 1)[-1]
        for qualified, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    names.discard(OUTPUT_HEAD)
    return sorted(names)


def resolve_target_modules(
    model: Any, targets: str | list[str], include_lm_head: bool = False
) -> list[str]:
    """Expand a preset against the model's layers; add lm_head when asked."""
    if targets == "attention":
        names = list(ATTENTION_MODULES)
    elif targets == "all-linear":
        names = linear_module_names(model)
    else:
        names = list(targets)
    if include_lm_head and OUTPUT_HEAD not in names:
        names.append(OUTPUT_HEAD)
    return names
