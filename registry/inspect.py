"""Reads a Hugging Face model directory or a PEFT adapter directory without torch.

Only JSON files and safetensors headers are read, so inspecting a 70B model takes milliseconds
and the registry never needs torch, transformers or peft.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import RegistryError, invalid

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"
SHARD_INDEX = "model.safetensors.index.json"

# The format caps headers at 100 MB; anything larger is not a safetensors file.
MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype codes, as torch names them.
TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}

SAFE_SERIALIZATION_HINT = (
    "load it and save it again with save_pretrained(..., safe_serialization=True), which writes "
    ".safetensors (transformers 5 always does)"
)

# PEFT stores tensors under the wrapper's module path.
PEFT_PREFIX = "base_model.model."

INPUT_EMBEDDING_SUFFIXES = (
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "embed_in.weight",
)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def element_count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class BaseModelInfo:
    architecture: str
    model_type: str | None
    parameter_count: int
    dtype: str
    config: dict[str, Any]


@dataclass(frozen=True)
class AdapterInfo:
    peft_method: str
    rank: int | None
    alpha: float | None
    target_modules: list[str] | None
    dropout: float | None
    modules_to_save: list[str] | None
    trainable_parameters: int
    base_model_name_or_path: str | None
    config: dict[str, Any]


def inspect_directory(path: Path) -> BaseModelInfo | AdapterInfo:
    """What a directory holds: a PEFT adapter or a full Hugging Face model."""
    path = Path(path)
    if not path.is_dir():
        raise invalid(f"{path} is not a directory; pass the folder save_pretrained wrote")
    if (path / ADAPTER_CONFIG).is_file():
        return _inspect_adapter(path)
    if (path / MODEL_CONFIG).is_file():
        return _inspect_base(path)
    raise invalid(
        f"{path} holds neither {ADAPTER_CONFIG} (a PEFT adapter) nor {MODEL_CONFIG} (a Hugging "
        "Face model); pass the folder that save_pretrained wrote"
    )


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes from a safetensors file's JSON header."""
    try:
        with Path(path).open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ValueError("shorter than 8 bytes")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header length {length} is over the 100 MB limit")
            raw = handle.read(length)
            if len(raw) != length:
                raise ValueError("the header is cut short")
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            shape = tuple(int(size) for size in entry["shape"])
            if any(size < 0 for size in shape):
                raise ValueError(f"tensor {name} has a negative size")
            tensors[name] = TensorInfo(dtype=str(entry["dtype"]), shape=shape)
    except OSError as error:
        raise invalid(f"cannot read {path}: {error}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise invalid(
            f"{path} is not a valid safetensors file ({error}); {SAFE_SERIALIZATION_HINT}"
        ) from None
    return tensors


def check_adapter_fits_base(adapter_dir: Path, base_dir: Path, base_label: str) -> None:
    """Refuses an adapter whose LoRA shapes cannot sit on the base model's weights.

    Catches "registered on the wrong base" at registration instead of at the first request.
    """
    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    adapter_config = _read_json(adapter_dir / ADAPTER_CONFIG)
    adapter_tensors = _adapter_tensors(adapter_dir)
    base_config = _read_json(base_dir / MODEL_CONFIG)
    base_tensors = _base_tensors(base_dir)
    trained_on = adapter_config.get("base_model_name_or_path") or "a base it does not name"

    def mismatch(detail: str) -> RegistryError:
        return invalid(
            f"{detail}: {base_label} does not match the base this adapter was trained on "
            f"({trained_on!r}); register it on that base, or retrain it on {base_label}"
        )

    lora_parts: dict[str, dict[str, TensorInfo]] = {}
    saved_copies: dict[str, TensorInfo] = {}
    for name, tensor in adapter_tensors.items():
        stripped = name.removeprefix(PEFT_PREFIX)
        parsed = _lora_part(stripped)
        if parsed is not None:
            module, part = parsed
            lora_parts.setdefault(module, {})[part] = tensor
        elif stripped.endswith(".weight"):
            # modules_to_save copies and saved embedding layers replace the base weight whole.
            saved_copies[stripped.replace(".base_layer.", ".")] = tensor

    for module, parts in sorted(lora_parts.items()):
        weight_name = _base_weight_name(module, base_tensors, base_config)
        if weight_name is None:
            part, tensor = sorted(parts.items())[0]
            raise mismatch(
                f"module '{module}' has {part} of shape {list(tensor.shape)} but {base_label} "
                f"has no weight '{module}.weight'"
            )
        base_shape = base_tensors[weight_name].shape
        is_embedding = any(part.startswith("lora_embedding") for part in parts)
        for part, tensor in sorted(parts.items()):
            reason = _misfit(part, tensor.shape, base_shape, is_embedding)
            if reason is not None:
                raise mismatch(
                    f"module '{module}' has {part} of shape {list(tensor.shape)} but "
                    f"{base_label}'s weight '{weight_name}' has shape {list(base_shape)} ({reason})"
                )

    for name, tensor in sorted(saved_copies.items()):
        module = name.removesuffix(".weight")
        weight_name = _base_weight_name(module, base_tensors, base_config)
        if weight_name is not None and base_tensors[weight_name].shape != tensor.shape:
            raise mismatch(
                f"module '{module}' is saved whole with shape {list(tensor.shape)} but "
                f"{base_label}'s weight '{weight_name}' has shape "
                f"{list(base_tensors[weight_name].shape)}"
            )


def _inspect_adapter(path: Path) -> AdapterInfo:
    config = _read_json(path / ADAPTER_CONFIG)
    tensors = _adapter_tensors(path)
    peft_type = str(config.get("peft_type") or "")
    if not peft_type:
        raise invalid(
            f"{path / ADAPTER_CONFIG} has no peft_type; save the adapter with PEFT's "
            "save_pretrained so the config is complete"
        )
    method = "dora" if config.get("use_dora") else peft_type.lower()
    target_modules = config.get("target_modules")
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    elif target_modules is not None:
        # PEFT matches target modules as a set; sorting makes equal configs compare equal.
        target_modules = sorted(str(module) for module in target_modules)
    modules_to_save = config.get("modules_to_save")
    return AdapterInfo(
        peft_method=method,
        rank=config.get("r"),
        alpha=config.get("lora_alpha"),
        target_modules=target_modules,
        dropout=config.get("lora_dropout"),
        modules_to_save=list(modules_to_save) if modules_to_save is not None else None,
        # Copies of frozen base layers (`base_layer`) are saved beside the adapter, not trained.
        trainable_parameters=sum(
            tensor.element_count for name, tensor in tensors.items() if ".base_layer." not in name
        ),
        base_model_name_or_path=config.get("base_model_name_or_path"),
        config=config,
    )


def _inspect_base(path: Path) -> BaseModelInfo:
    config = _read_json(path / MODEL_CONFIG)
    tensors = _base_tensors(path)
    architectures = config.get("architectures")
    if not architectures or not isinstance(architectures, list):
        raise invalid(
            f"{path / MODEL_CONFIG} names no architectures; save the model with the model class's "
            "save_pretrained (e.g. AutoModelForCausalLM) so config.json records it"
        )
    by_dtype: Counter[str] = Counter()
    for tensor in tensors.values():
        by_dtype[tensor.dtype] += tensor.element_count
    dominant = by_dtype.most_common(1)[0][0] if by_dtype else "F32"
    return BaseModelInfo(
        architecture=str(architectures[0]),
        model_type=config.get("model_type"),
        parameter_count=sum(tensor.element_count for tensor in tensors.values()),
        dtype=TORCH_DTYPES.get(dominant, dominant.lower()),
        config=config,
    )


def _adapter_tensors(path: Path) -> dict[str, TensorInfo]:
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise invalid(
                f"{path} holds adapter_model.bin (pickle) but no {ADAPTER_WEIGHTS}; the registry "
                f"reads safetensors only: {SAFE_SERIALIZATION_HINT}"
            )
        raise invalid(
            f"{path} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}; copy the whole folder that "
            f"PEFT's save_pretrained wrote, or {SAFE_SERIALIZATION_HINT}"
        )
    return read_safetensors_header(weights)


def _base_tensors(path: Path) -> dict[str, TensorInfo]:
    """Every stored tensor by name, over one file or the shards an index lists."""
    index = path / SHARD_INDEX
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise invalid(f"{index} has no weight_map; save the model again with save_pretrained")
        files = sorted({str(name) for name in weight_map.values()})
        for name in files:
            if not (path / name).is_file() or Path(name).name != name:
                raise invalid(
                    f"{index} lists shard {name!r}, which is not in {path}; copy every shard"
                )
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
            raise invalid(
                f"{path} holds pickled weights (.bin) but no .safetensors; the registry reads "
                f"safetensors only: {SAFE_SERIALIZATION_HINT}"
            )
        raise invalid(
            f"{path} has {MODEL_CONFIG} but no *.safetensors weights; copy the weights beside "
            f"it, or {SAFE_SERIALIZATION_HINT}"
        )
    tensors: dict[str, TensorInfo] = {}
    for name in files:
        tensors.update(read_safetensors_header(path / name))
    return tensors


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise invalid(
            f"{path} is missing; copy the whole folder that save_pretrained wrote"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise invalid(
            f"{path} is not valid JSON ({error}); fix it or save the model again"
        ) from None
    if not isinstance(data, dict):
        raise invalid(f"{path} must hold a JSON object; save the model again with save_pretrained")
    return data


_LORA_PARTS = (
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_embedding_A",
    ".lora_embedding_B",
    ".lora_magnitude_vector",
    ".lora_magnitude_vector.weight",
)


def _lora_part(name: str) -> tuple[str, str] | None:
    """(module path, part) for a LoRA tensor name such as `model.layers.0.q_proj.lora_A.weight`."""
    for suffix in _LORA_PARTS:
        if name.endswith(suffix):
            part = suffix.removeprefix(".").removesuffix(".weight")
            return name.removesuffix(suffix), part
    return None


def _base_weight_name(
    module: str, base_tensors: dict[str, TensorInfo], base_config: dict[str, Any]
) -> str | None:
    """The base tensor a module adapts; a tied lm_head is stored as the input embedding."""
    name = f"{module}.weight"
    if name in base_tensors:
        return name
    if module.split(".")[-1] != "lm_head" or not _ties_embeddings(base_config):
        return None
    if "model.embed_tokens.weight" in base_tensors:
        return "model.embed_tokens.weight"
    for suffix in INPUT_EMBEDDING_SUFFIXES:
        matches = [n for n in base_tensors if n == suffix or n.endswith("." + suffix)]
        if len(matches) == 1:
            return matches[0]
    return None


def _ties_embeddings(config: dict[str, Any]) -> bool:
    # transformers ties by default; multimodal configs keep the flag in text_config.
    text_config = config.get("text_config")
    if "tie_word_embeddings" not in config and isinstance(text_config, dict):
        return bool(text_config.get("tie_word_embeddings", True))
    return bool(config.get("tie_word_embeddings", True))


def _misfit(
    part: str, shape: tuple[int, ...], base_shape: tuple[int, ...], is_embedding: bool
) -> str | None:
    """Why a LoRA tensor cannot adapt a weight of `base_shape`, or None when it fits.

    Linear (and conv) weights are [out, in, ...]: lora_A is [r, in], lora_B is [out, r].
    Embeddings are [vocab, dim]: lora_embedding_A is [r, vocab], lora_embedding_B is [dim, r].
    DoRA's magnitude has one entry per output feature, or per dimension for an embedding.
    """
    if len(base_shape) < 2:
        return "the base weight is not a matrix"
    rows, columns = base_shape[0], base_shape[1]
    if part == "lora_A" and (len(shape) < 2 or shape[1] != columns):
        return f"lora_A needs {columns} input features"
    if part == "lora_B" and (len(shape) < 2 or shape[0] != rows):
        return f"lora_B needs {rows} output features"
    if part == "lora_embedding_A" and (len(shape) != 2 or shape[1] != rows):
        return f"lora_embedding_A needs {rows} embeddings"
    if part == "lora_embedding_B" and (len(shape) != 2 or shape[0] != columns):
        return f"lora_embedding_B needs dimension {columns}"
    if part == "lora_magnitude_vector":
        expected = columns if is_embedding else rows
        if math.prod(shape) != expected:  # conv layers keep it as [out, 1, 1, 1]
            return f"the DoRA magnitude needs {expected} entries"
    return None


def stored_tensors(model_dir: Path) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of every tensor a model directory stores (all shards)."""
    return _base_tensors(Path(model_dir))
