"""The tiny base model is built once per run (about 15 s of pretraining on one thread), in the
run's build cache, and copied from there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import built_once, tiny_base_copy

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once(tmp_path_factory, "tiny-base", tiny_base_copy)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_base: Path):
    from evalhub.finetune.loading import load_tokenizer

    return load_tokenizer(tiny_base)


def register_tiny_base(platform, directory: Path, name: str = "tiny") -> str:  # type: ignore[no-untyped-def]
    """Register the session's tiny model as a base version of `name`; returns its ref."""
    platform.registry.create_model(name, "base")
    return platform.registry.register_version(name, directory).ref
