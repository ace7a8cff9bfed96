"""A real `evalhub serve` with a real local backend serving a tiny Llama and its adapters: two
really fine-tuned to answer in JSON (the control and a good candidate) and one random adapter that
breaks the format (a bad candidate). The models are built once per test run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from evalhub.child_server import child_server
from evalhub.cli.registry import register_directory
from evalhub.client import Client
from tests.conftest import built_once, tiny_base_copy

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class Models:
    base: Path
    json_a: Path  # fine-tuned to answer {"words": [...]}
    json_b: Path  # the same task, another seed
    broken: Path  # random LoRA weights: answers that are not JSON


def _train_json(base: Path, out: Path, seed: int) -> None:
    import torch

    from evalhub.finetune.config import TrainConfig
    from evalhub.finetune.tasks import json_task
    from evalhub.finetune.trainer import Trainer

    torch.set_num_threads(1)
    config = TrainConfig(
        method="lora",
        max_steps=150,
        batch_size=16,
        learning_rate=3e-3,
        warmup_ratio=0.05,
        seed=seed,
    )
    result = Trainer(config, base, out / "run").run(json_task(2000, seed=seed), None)
    result.output_dir.rename(out / "adapter")


def _random_adapter(base: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    model.save_pretrained(out / "adapter")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    base = built_once(tmp_path_factory, "tiny-base", tiny_base_copy)
    json_a = built_once(tmp_path_factory, "json-adapter-0", lambda r: _train_json(base, r, 0))
    json_b = built_once(tmp_path_factory, "json-adapter-1", lambda r: _train_json(base, r, 1))
    broken = built_once(tmp_path_factory, "broken-adapter", lambda r: _random_adapter(base, r))
    return Models(base, json_a / "adapter", json_b / "adapter", broken / "adapter")


@dataclass
class Served:
    url: str
    token: str
    api: Client
    env: dict[str, str]


@pytest.fixture(scope="module")
def served(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """bot/1 (@production) answers JSON; bot/2 breaks it; bot/3 answers JSON too."""
    home = tmp_path_factory.mktemp("monitoring-home")
    # Passes run when a test asks (POST /monitors/run), so each decision is at a known point.
    settings = {"EVALHUB_MONITOR_INTERVAL": "0", "EVALHUB_ADAPTER_IDLE_SECONDS": "2"}
    with child_server(home, settings) as server:
        assert server.token, server.tail()
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
            api = Client(http)
            api.post("/models", {"name": "tiny", "kind": "base"})
            register_directory(api, models.base, "tiny")
            api.post("/models", {"name": "bot", "kind": "adapter"})
            for adapter in (models.json_a, models.broken, models.json_b):
                register_directory(api, adapter, "bot", base="tiny/1")
            api.put("/models/bot/aliases/production", {"version": 1})
            backend = api.post("/backends", {"name": "cpu", "kind": "local", "base": "tiny/1"})
            assert backend["status"] == "healthy", backend
            env = {"EVALHUB_URL": server.url, "EVALHUB_TOKEN": server.token}
            yield Served(url=server.url, token=server.token, api=api, env=env)
