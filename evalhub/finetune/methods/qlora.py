"""QLoRA: LoRA over a base loaded in 4-bit NF4 with double quantisation (bitsandbytes).

The 4-bit kernels need a CUDA GPU, so the options refuse to validate without one: the job fails when
it is submitted, not minutes later while loading.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field, model_validator

from evalhub.finetune.methods.lora import LoraOptions, peft_lora_config
from evalhub.finetune.methods.registry import register_method


class QloraOptions(LoraOptions):
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="dtype the 4-bit weights are dequantised to for matmuls."
    )

    @model_validator(mode="after")
    def _needs_cuda_and_bitsandbytes(self) -> QloraOptions:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                "qlora needs a CUDA GPU (bitsandbytes 4-bit NF4 kernels) and none was found; "
                "use method 'lora' on this machine, or run the job on a GPU worker"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(
                "qlora needs bitsandbytes: pip install 'bitsandbytes>=0.45' "
                "(or pip install 'evalhub[gpu]')"
            )
        return self


def qlora_load_kwargs(options: QloraOptions) -> dict[str, Any]:
    import torch
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, options.compute_dtype),
        ),
        "device_map": {"": 0},
    }


def apply_qlora(model: Any, options: QloraOptions) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, peft_lora_config(model, options))


register_method(
    "qlora",
    options_type=QloraOptions,
    apply=apply_qlora,
    output="adapter",
    description="LoRA over a 4-bit NF4 base (bitsandbytes, CUDA only).",
    load_kwargs=qlora_load_kwargs,
)
