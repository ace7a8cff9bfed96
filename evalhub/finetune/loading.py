"""Loading model directories (full models or PEFT adapters) for inference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def load_model(path: Path, base_model: Path | None = None, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) from a model directory, or from an adapter directory on its base.

    An adapter's `base_model_name_or_path` may be a registry reference rather than a path, so the
    caller can pass the base directory explicitly.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not is_adapter_dir(path):
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return model.to(device).eval(), load_tokenizer(path)
    from peft import PeftModel

    if base_model is None:
        config = json.loads((path / "adapter_config.json").read_text())
        base_model = Path(config["base_model_name_or_path"])
    base = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(path))
    return model.to(device).eval(), load_tokenizer(base_model)
