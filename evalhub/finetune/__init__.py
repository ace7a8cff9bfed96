"""Fine-tuning: data checks, tokenisation, methods, the trainer and the tiny test model.

Importing this package stays light (no torch): the trainer, the tiny-model builder and the methods'
`apply` functions import torch, transformers and peft only when they run.
"""

from __future__ import annotations

from evalhub.finetune.config import TrainConfig
from evalhub.finetune.data import ValidationReport, format_report, validate_chat_file
from evalhub.finetune.estimate import Estimate, estimate, lora_parameters
from evalhub.finetune.methods import get_method, method_names, register_method
from evalhub.finetune.tasks import upper_case_task, write_jsonl

__all__ = [
    "Estimate",
    "TrainConfig",
    "ValidationReport",
    "estimate",
    "format_report",
    "get_method",
    "lora_parameters",
    "method_names",
    "register_method",
    "upper_case_task",
    "validate_chat_file",
    "write_jsonl",
]
