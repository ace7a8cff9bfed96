"""Fine-tuning methods, one module each, registered by name on import."""

from __future__ import annotations

from evalhub.finetune.methods import dora, full, galore, lora, qlora
from evalhub.finetune.methods.dora import DoraOptions
from evalhub.finetune.methods.full import FullOptions
from evalhub.finetune.methods.galore import GaloreOptions
from evalhub.finetune.methods.lora import LoraOptions
from evalhub.finetune.methods.qlora import QloraOptions
from evalhub.finetune.methods.registry import (
    Method,
    MethodError,
    OutputKind,
    get_method,
    method_names,
    register_method,
    unregister_method,
)

__all__ = [
    "DoraOptions",
    "FullOptions",
    "GaloreOptions",
    "LoraOptions",
    "Method",
    "MethodError",
    "OutputKind",
    "QloraOptions",
    "dora",
    "full",
    "galore",
    "get_method",
    "lora",
    "method_names",
    "qlora",
    "register_method",
    "unregister_method",
]
