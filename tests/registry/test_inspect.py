from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

from registry.errors import ErrorCode, RegistryError
from registry.inspect import (
    AdapterInfo,
    BaseModelInfo,
    check_adapter_fits_base,
    inspect_directory,
    read_safetensors_header,
)

BASE_NAME = "tiny/llama-64"


def llama(hidden_size: int = 64, **overrides: Any) -> LlamaForCausalLM:
    torch.manual_seed(0)
    settings: dict[str, Any] = dict(
        hidden_size=hidden_size,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=300,
    )
    settings.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**settings))


def save_adapter(
    directory: Path, config: LoraConfig, **model_overrides: Any
) -> tuple[Path, PeftModel]:
    model = llama(**model_overrides)
    model.name_or_path = BASE_NAME  # what from_pretrained would record; peft copies it
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(directory)
    return directory, peft_model


def stored_element_count(directory: Path) -> int:
    """Counts what is stored, with the safetensors library as an independent reader."""
    total = 0
    for path in directory.glob("*.safetensors"):
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += math.prod(handle.get_slice(name).get_shape())
    return total


@dataclass
class Models:
    base: Path
    base_model: LlamaForCausalLM
    wide_base: Path
    short_base: Path
    tied_base: Path
    tied_model: LlamaForCausalLM
    sharded_base: Path
    bf16_base: Path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("models")
    base_model = llama()
    base_model.save_pretrained(root / "base")
    llama(hidden_size=96).save_pretrained(root / "wide")
    llama(num_hidden_layers=1).save_pretrained(root / "short")
    tied_model = llama(tie_word_embeddings=True)
    tied_model.save_pretrained(root / "tied")
    llama().save_pretrained(root / "sharded", max_shard_size="60KB")
    llama().to(torch.bfloat16).save_pretrained(root / "bf16")
    return Models(
        base=root / "base",
        base_model=base_model,
        wide_base=root / "wide",
        short_base=root / "short",
        tied_base=root / "tied",
        tied_model=tied_model,
        sharded_base=root / "sharded",
        bf16_base=root / "bf16",
    )


# -- base models -------------------------------------------------------------------------------


def test_base_model_info(models: Models) -> None:
    info = inspect_directory(models.base)
    assert isinstance(info, BaseModelInfo)
    assert info.architecture == "LlamaForCausalLM"
    assert info.model_type == "llama"
    assert info.dtype == "float32"
    assert info.parameter_count == sum(p.numel() for p in models.base_model.parameters())
    assert info.parameter_count == stored_element_count(models.base)
    assert info.config["hidden_size"] == 64


def test_tied_embeddings_are_counted_once(models: Models) -> None:
    info = inspect_directory(models.tied_base)
    assert isinstance(info, BaseModelInfo)
    assert "lm_head.weight" not in read_safetensors_header(models.tied_base / "model.safetensors")
    assert info.parameter_count == stored_element_count(models.tied_base)
    assert info.parameter_count == sum(p.numel() for p in models.tied_model.parameters())


def test_sharded_model_counts_every_shard(models: Models) -> None:
    assert (models.sharded_base / "model.safetensors.index.json").is_file()
    assert len(list(models.sharded_base.glob("*.safetensors"))) > 1
    info = inspect_directory(models.sharded_base)
    assert isinstance(info, BaseModelInfo)
    assert info.parameter_count == sum(p.numel() for p in models.base_model.parameters())


def test_dominant_dtype_uses_torch_names(models: Models) -> None:
    info = inspect_directory(models.bf16_base)
    assert isinstance(info, BaseModelInfo) and info.dtype == "bfloat16"


def test_missing_shard_is_refused(models: Models, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in models.sharded_base.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    next(broken.glob("model-00001-*.safetensors")).unlink()
    with pytest.raises(RegistryError, match=r"lists shard .*copy every shard") as caught:
        inspect_directory(broken)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT


# -- adapters ----------------------------------------------------------------------------------


def test_lora_adapter_info(tmp_path: Path) -> None:
    config = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
    directory, peft_model = save_adapter(tmp_path / "lora", config)
    info = inspect_directory(directory)
    assert isinstance(info, AdapterInfo)
    assert info.peft_method == "lora"
    assert info.rank == config.r == 4
    assert info.alpha == config.lora_alpha == 16
    assert info.target_modules == sorted(config.target_modules) == ["q_proj", "v_proj"]
    assert info.dropout == config.lora_dropout
    assert info.modules_to_save is None
    assert info.trainable_parameters == peft_model.get_nb_trainable_parameters()[0]
    assert info.base_model_name_or_path == BASE_NAME
    assert info.config["peft_type"] == "LORA"


def test_dora_adapter_info(tmp_path: Path) -> None:
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True)
    directory, peft_model = save_adapter(tmp_path / "dora", config)
    info = inspect_directory(directory)
    assert isinstance(info, AdapterInfo)
    assert info.peft_method == "dora"
    assert info.trainable_parameters == peft_model.get_nb_trainable_parameters()[0]


def test_modules_to_save_and_all_linear(tmp_path: Path) -> None:
    config = LoraConfig(r=4, target_modules="all-linear", modules_to_save=["lm_head"])
    directory, peft_model = save_adapter(tmp_path / "all", config)
    info = inspect_directory(directory)
    assert isinstance(info, AdapterInfo)
    assert info.modules_to_save == ["lm_head"]
    assert info.trainable_parameters == peft_model.get_nb_trainable_parameters()[0]
    # PEFT expands "all-linear" to the module paths it matched when it saves.
    assert info.target_modules is not None
    assert "model.layers.0.self_attn.q_proj" in info.target_modules


def test_saved_copies_of_frozen_embeddings_are_not_trainable(tmp_path: Path) -> None:
    config = LoraConfig(r=4, target_modules=["embed_tokens", "lm_head"], use_dora=True)
    directory, peft_model = save_adapter(tmp_path / "emb", config)
    names = read_safetensors_header(directory / "adapter_model.safetensors")
    assert "base_model.model.model.embed_tokens.base_layer.weight" in names
    info = inspect_directory(directory)
    assert isinstance(info, AdapterInfo) and info.peft_method == "dora"
    assert info.trainable_parameters == peft_model.get_nb_trainable_parameters()[0]


def test_target_modules_string_is_kept_as_one_element_list(tmp_path: Path) -> None:
    directory, _ = save_adapter(tmp_path / "lora", LoraConfig(r=4, target_modules=["q_proj"]))
    config = json.loads((directory / "adapter_config.json").read_text())
    config["target_modules"] = ".*q_proj"
    (directory / "adapter_config.json").write_text(json.dumps(config))
    info = inspect_directory(directory)
    assert isinstance(info, AdapterInfo) and info.target_modules == [".*q_proj"]


# -- adapter against base ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True),
        LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"], modules_to_save=["lm_head"]),
        LoraConfig(r=4, target_modules=["embed_tokens", "lm_head"], use_dora=True),
    ],
    ids=["lora", "dora", "embedding-and-modules-to-save", "dora-embedding-and-lm-head"],
)
def test_adapter_fits_its_base(models: Models, tmp_path: Path, config: LoraConfig) -> None:
    directory, _ = save_adapter(tmp_path / "adapter", config)
    check_adapter_fits_base(directory, models.base, "llama-64/1")


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_adapter_on_a_wider_base_is_refused(models: Models, tmp_path: Path, use_dora: bool) -> None:
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=use_dora)
    directory, _ = save_adapter(tmp_path / "adapter", config)
    with pytest.raises(RegistryError) as caught:
        check_adapter_fits_base(directory, models.wide_base, "llama-96/1")
    error = caught.value
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert "model.layers.0.self_attn.q_proj" in error.message
    assert "[4, 64]" in error.message and "[96, 96]" in error.message
    assert "llama-96/1 does not match" in error.message
    assert BASE_NAME in error.message


def test_adapter_with_a_module_the_base_lacks_is_refused(models: Models, tmp_path: Path) -> None:
    directory, _ = save_adapter(tmp_path / "adapter", LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(RegistryError) as caught:
        check_adapter_fits_base(directory, models.short_base, "llama-short/1")
    assert "model.layers.1.self_attn.q_proj" in caught.value.message
    assert "has no weight" in caught.value.message
    assert BASE_NAME in caught.value.message


def test_embedding_adapter_on_another_vocabulary_is_refused(models: Models, tmp_path: Path) -> None:
    directory, _ = save_adapter(tmp_path / "a", LoraConfig(r=4, target_modules=["embed_tokens"]))
    other_vocab = tmp_path / "vocab"
    llama(vocab_size=310).save_pretrained(other_vocab)
    with pytest.raises(RegistryError, match=r"model\.embed_tokens.*300.*310"):
        check_adapter_fits_base(directory, other_vocab, "llama-310/1")


def test_lm_head_adapter_on_tied_embeddings(models: Models, tmp_path: Path) -> None:
    config = LoraConfig(r=4, target_modules=["lm_head", "q_proj"])
    directory, _ = save_adapter(tmp_path / "adapter", config, tie_word_embeddings=True)
    names = read_safetensors_header(directory / "adapter_model.safetensors")
    assert "base_model.model.lm_head.lora_B.weight" in names
    check_adapter_fits_base(directory, models.tied_base, "llama-tied/1")

    tied_other_vocab = tmp_path / "tied-310"
    llama(vocab_size=310, tie_word_embeddings=True).save_pretrained(tied_other_vocab)
    with pytest.raises(RegistryError) as caught:
        check_adapter_fits_base(directory, tied_other_vocab, "llama-tied-310/1")
    assert "lm_head" in caught.value.message and "model.embed_tokens.weight" in caught.value.message

    # An untied base that does not store lm_head has nothing to adapt.
    config_path = tied_other_vocab / "config.json"
    untied = json.loads(config_path.read_text()) | {"tie_word_embeddings": False}
    config_path.write_text(json.dumps(untied))
    with pytest.raises(RegistryError, match=r"'lm_head' has .* no weight 'lm_head\.weight'"):
        check_adapter_fits_base(directory, tied_other_vocab, "llama-untied/1")


# -- refusals ----------------------------------------------------------------------------------


def refused(path: Path) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        inspect_directory(path)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    return caught.value


def test_empty_directory_is_refused(tmp_path: Path) -> None:
    assert "neither adapter_config.json" in refused(tmp_path).message


def test_pickled_weights_are_refused_with_a_fix(models: Models, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes((models.base / "config.json").read_bytes())
    torch.save(models.base_model.state_dict(), tmp_path / "pytorch_model.bin")
    message = refused(tmp_path).message
    assert "pickled weights" in message and "safe_serialization=True" in message


def test_pickled_adapter_is_refused_with_a_fix(tmp_path: Path) -> None:
    directory, _ = save_adapter(tmp_path / "a", LoraConfig(r=4, target_modules=["q_proj"]))
    (directory / "adapter_model.safetensors").rename(directory / "adapter_model.bin")
    assert "safe_serialization=True" in refused(directory).message


def test_config_without_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    assert "no *.safetensors" in refused(tmp_path).message


def test_broken_json_is_refused(models: Models, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": [')
    (tmp_path / "model.safetensors").write_bytes((models.base / "model.safetensors").read_bytes())
    assert "not valid JSON" in refused(tmp_path).message


def test_config_without_architectures_is_refused(models: Models, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").write_bytes((models.base / "model.safetensors").read_bytes())
    assert "names no architectures" in refused(tmp_path).message


@pytest.mark.parametrize(
    "content",
    [b"", b"\x01\x02", struct.pack("<Q", 10) + b"{}", struct.pack("<Q", 2**40) + b"{}"],
    ids=["empty", "short", "truncated-header", "huge-header"],
)
def test_broken_safetensors_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (tmp_path / "model.safetensors").write_bytes(content)
    assert "not a valid safetensors file" in refused(tmp_path).message


def test_registry_imports_no_torch_or_web_framework() -> None:
    code = (
        "import sys, registry.inspect, registry.artifacts\n"
        "heavy = {'torch', 'transformers', 'peft', 'fastapi', 'starlette', 'evalhub'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
