"""A LoRA adapter that changes nothing, so base requests can carry an adapter too.

vLLM's CPU build indexes stacked adapter weights with the per-token adapter index, and "no
adapter" (-1) wraps to the last slot: in a batch that mixes base and adapter requests, base
requests get another adapter's output. Sending base requests to an identity adapter (B = 0)
keeps every index valid; its output equals the base's exactly, since it adds exact zeros.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from registry.errors import invalid
from registry.inspect import stored_tensors

PREFIX = "base_model.model."


def identity_adapter(base_dir: Path, out_dir: Path, base_ref: str) -> Path:
    """Writes (once) a rank-1 adapter on every attention query projection with B = 0."""
    out_dir = Path(out_dir)
    if (out_dir / "adapter_config.json").is_file():
        return out_dir
    tensors = stored_tensors(base_dir)
    targets = sorted(
        name.removesuffix(".weight")
        for name, info in tensors.items()
        if name.endswith(".q_proj.weight") and len(info.shape) == 2
    )
    if not targets:
        raise invalid(
            f"{base_ref} has no q_proj layers to attach an identity adapter to; serve it on a "
            "local backend instead"
        )
    weights: dict[str, np.ndarray] = {}
    for module in targets:
        out_features, in_features = tensors[f"{module}.weight"].shape
        weights[f"{PREFIX}{module}.lora_A.weight"] = np.zeros((1, in_features), np.float32)
        weights[f"{PREFIX}{module}.lora_B.weight"] = np.zeros((out_features, 1), np.float32)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_ref,
        "r": 1,
        "lora_alpha": 1,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": ["q_proj"],
        "modules_to_save": None,
        "use_dora": False,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".identity-", dir=out_dir.parent))
    save_file(weights, str(work / "adapter_model.safetensors"))
    (work / "adapter_config.json").write_text(json.dumps(config, indent=2))
    try:
        os.replace(work, out_dir)
    except OSError:  # another process wrote it first; keep theirs
        shutil.rmtree(work, ignore_errors=True)
    return out_dir
