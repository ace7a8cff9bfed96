from __future__ import annotations

from pathlib import Path

import pytest

from evalhub.finetune.estimate import estimate, lora_parameters

LLAMA_7B = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
}


def test_one_4096_square_matrix_at_rank_16() -> None:
    assert lora_parameters(4096, 4096, 16) == 131_072
    assert 4096 * 4096 == 16_777_216
    assert 4096 * 4096 // lora_parameters(4096, 4096, 16) == 128


def test_llama_7b_shapes() -> None:
    full = estimate(LLAMA_7B, "full", dtype="bfloat16")
    assert full.total_parameters == 6_738_415_616  # the published Llama-2-7B count
    assert full.optimizer_bytes == 8 * full.total_parameters
    lora = estimate(LLAMA_7B, "lora", rank=16, target_modules="attention", include_lm_head=False)
    assert lora.trainable_parameters == 32 * 2 * 131_072
    qlora = estimate(LLAMA_7B, "qlora", rank=16)
    assert qlora.weights_bytes < lora.weights_bytes / 2
    galore = estimate(LLAMA_7B, "galore", rank=128)
    assert galore.optimizer_bytes < full.optimizer_bytes / 3
    checkpointed = estimate(LLAMA_7B, "lora", seq_len=2048, gradient_checkpointing=True)
    assert (
        checkpointed.activations_bytes < estimate(LLAMA_7B, "lora", seq_len=2048).activations_bytes
    )


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_estimate_matches_peft_on_the_tiny_model(tiny_base: Path, method: str) -> None:
    import json

    from transformers import AutoModelForCausalLM

    from evalhub.finetune.methods import get_method

    config = json.loads((tiny_base / "config.json").read_text())
    spec = get_method(method)
    model = spec.apply(AutoModelForCausalLM.from_pretrained(tiny_base), spec.parse_options({}))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert estimate(config, method, rank=16).trainable_parameters == trainable


def test_unknown_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="dtype"):
        estimate(LLAMA_7B, "lora", dtype="int3")
    with pytest.raises(ValueError, match="unknown target modules"):
        estimate(LLAMA_7B, "lora", target_modules=["qkv"])
