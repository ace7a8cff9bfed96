from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

from evalhub.finetune.config import TrainConfig
from evalhub.finetune.methods import (
    LoraOptions,
    MethodError,
    get_method,
    method_names,
    register_method,
    unregister_method,
)
from evalhub.finetune.tasks import upper_case_task
from evalhub.finetune.trainer import Trainer


def test_all_methods_are_registered_with_their_output_kind() -> None:
    assert method_names() == ["dora", "full", "galore", "lora", "qlora"]
    outputs = {name: get_method(name).output for name in method_names()}
    assert outputs == {
        "dora": "adapter",
        "full": "model",
        "galore": "model",
        "lora": "adapter",
        "qlora": "adapter",
    }


def test_duplicate_and_bad_names_are_refused() -> None:
    with pytest.raises(MethodError, match="'lora' is already registered"):
        register_method(
            "lora", options_type=LoraOptions, apply=lambda m, o: m, output="adapter", description=""
        )
    with pytest.raises(MethodError, match="not valid"):
        register_method(
            "Lo Ra",
            options_type=LoraOptions,
            apply=lambda m, o: m,
            output="adapter",
            description="",
        )
    register_method(
        "noop", options_type=BaseModel, apply=lambda m, o: m, output="model", description="x"
    )
    try:
        assert get_method("noop").output == "model"
    finally:
        unregister_method("noop")


def test_unknown_method_lists_known_names() -> None:
    with pytest.raises(
        MethodError, match="unknown fine-tuning method 'lorra'; known methods: dora, full"
    ):
        get_method("lorra")


def test_option_errors_name_the_field() -> None:
    lora = get_method("lora")
    with pytest.raises(MethodError, match=r"rank: Input should be greater than 0"):
        lora.parse_options({"rank": 0})
    with pytest.raises(MethodError, match=r"target_modules: unknown preset 'mlp'"):
        lora.parse_options({"target_modules": "mlp"})
    with pytest.raises(MethodError, match=r"ranks: Extra inputs are not permitted"):
        lora.parse_options({"ranks": 8})
    with pytest.raises(ValueError, match="invalid options for method 'lora': dropout"):
        TrainConfig(method="lora", method_options={"dropout": 1.5})


def test_lora_defaults_are_servable_by_vllm() -> None:
    options = get_method("lora").parse_options({})
    assert options.rank == 16 and options.lora_alpha == 32 and options.dropout == 0.05
    assert options.modules_to_save == [] and options.include_lm_head
    assert get_method("lora").parse_options({"rank": 4, "alpha": 8}).lora_alpha == 8


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_qlora_is_refused_at_validation_without_cuda() -> None:
    with pytest.raises(MethodError, match="qlora needs a CUDA GPU"):
        get_method("qlora").parse_options({})
    with pytest.raises(ValueError, match="qlora needs a CUDA GPU"):
        TrainConfig(method="qlora", method_options={"rank": 8})


METHOD_CASES = {
    "full": ({}, 1e-3),
    "lora": ({"rank": 8}, 3e-3),
    "dora": ({"rank": 8}, 3e-3),
    "galore": ({"rank": 16, "update_interval": 10}, 3e-3),
}


@pytest.mark.parametrize("method", sorted(METHOD_CASES))
def test_each_method_trains_and_loss_goes_down(
    tiny_base: Path, tmp_path: Path, method: str
) -> None:
    options, learning_rate = METHOD_CASES[method]
    config = TrainConfig(
        method=method,
        method_options=options,
        max_steps=30,
        batch_size=8,
        learning_rate=learning_rate,
        warmup_ratio=0.1,
    )
    losses: list[float] = []
    trainer = Trainer(
        config,
        tiny_base,
        tmp_path,
        on_event=lambda event: event["type"] == "step" and losses.append(event["loss"]),
    )
    result = trainer.run(upper_case_task(240, seed=1))
    assert statistics.fmean(losses[-5:]) < 0.6 * statistics.fmean(losses[:5])
    saved = {path.name for path in result.output_dir.iterdir()}
    if get_method(method).output == "adapter":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= saved
    else:
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= saved
