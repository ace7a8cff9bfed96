from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from evalhub.finetune import tiny
from evalhub.finetune.tiny import build_tiny_model, cached_tiny_model


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_identical_files_and_other_seed_does_not(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", seed=3, pretrain_steps=15)
    second = build_tiny_model(tmp_path / "b", seed=3, pretrain_steps=15)
    other = build_tiny_model(tmp_path / "c", seed=4, pretrain_steps=15)
    assert digest(first / "model.safetensors") == digest(second / "model.safetensors")
    assert digest(first / "tokenizer.json") == digest(second / "tokenizer.json")
    assert digest(first / "model.safetensors") != digest(other / "model.safetensors")


def test_a_cached_build_is_built_once_and_is_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[int] = []
    build = tiny.build_tiny_model

    def counted(out_dir: Path, **options):  # type: ignore[no-untyped-def]
        builds.append(options["seed"])
        return build(out_dir, **options)

    monkeypatch.setattr(tiny, "build_tiny_model", counted)
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(3) as pool:  # concurrent callers wait for the one build
        found = set(pool.map(lambda _: cached_tiny_model(3, 15, cache=cache), range(3)))
    assert len(found) == 1 and builds == [3]
    (cached,) = found
    fresh = build(tmp_path / "fresh", seed=3, pretrain_steps=15)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest(cached / name) == digest(fresh / name), name
    assert cached_tiny_model(3, 15, cache=cache) == cached and builds == [3]
    assert cached_tiny_model(4, 15, cache=cache) != cached and builds == [3, 4]
    assert not [path for path in cache.iterdir() if path.name.startswith(".building-")]


def test_saved_model_has_chat_template_eos_and_float32(tiny_base: Path, tiny_tokenizer) -> None:
    messages = [
        {"role": "user", "content": "upper: cat dog"},
        {"role": "assistant", "content": "CAT DOG"},
    ]
    prompt = tiny_tokenizer.apply_chat_template(
        messages[:1], tokenize=False, add_generation_prompt=True
    )
    full = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert prompt.endswith("<|assistant|>")
    assert full == prompt + "CAT DOG" + tiny_tokenizer.eos_token
    generation = json.loads((tiny_base / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tiny_tokenizer.eos_token_id
    assert generation["pad_token_id"] == tiny_tokenizer.pad_token_id
    config = json.loads((tiny_base / "config.json").read_text())
    assert config["dtype"] == "float32"


def test_pretrained_base_copies_but_does_not_upper_case(tiny_base: Path) -> None:
    from evalhub.finetune.generation import evaluate_exact_match
    from evalhub.finetune.tiny import copy_examples

    assert evaluate_exact_match(tiny_base, copy_examples(20, seed=99), 16) >= 0.5


def test_importing_the_package_does_not_import_torch() -> None:
    code = (
        "import sys, evalhub.finetune, evalhub.finetune.tokenize, evalhub.finetune.tiny; "
        "print('torch' in sys.modules or 'transformers' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "False"
