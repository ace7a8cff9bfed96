"""A real tiny Llama, real PEFT adapters on it, and a real local backend on a free port.

Built once per test run (shared by pytest-xdist workers): the tiny base (about 6 s of pretraining on one thread) and three adapters;
the server runs uvicorn in a thread so the tests can also reach the engine it serves.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import built_once

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BASE_NAME = "tiny"


@dataclass(frozen=True)
class Models:
    base: Path
    adapter_root: Path
    alpha: Path
    beta: Path
    wide: Path  # trained on a wider base: must be refused
    outside: Path  # a valid adapter outside adapter_root


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def save_adapter(base_model: object, directory: Path, seed: int) -> Path:
    """LoRA on q, v and lm_head with random non-zero B, so that each adapter changes answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        base_model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"])
    )
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    peft_model.save_pretrained(directory, save_embedding_layers=False)
    return directory


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from evalhub.finetune.tiny import build_tiny_model

    def build(root: Path) -> None:
        base = build_tiny_model(root / "base", seed=0, hidden_size=64, pretrain_steps=150)

        def fresh_base() -> object:
            return AutoModelForCausalLM.from_pretrained(base)

        config = LlamaConfig.from_pretrained(base)
        config.hidden_size, config.intermediate_size = 96, 192
        save_adapter(fresh_base(), root / "adapters" / "alpha", seed=1)
        save_adapter(fresh_base(), root / "adapters" / "beta", seed=2)
        save_adapter(LlamaForCausalLM(config), root / "adapters" / "wide", seed=3)
        save_adapter(fresh_base(), root / "outside" / "gamma", seed=4)

    root = built_once(tmp_path_factory, "serving-models", build)
    adapter_root = root / "adapters"
    return Models(
        base=root / "base",
        adapter_root=adapter_root,
        alpha=adapter_root / "alpha",
        beta=adapter_root / "beta",
        wide=adapter_root / "wide",
        outside=root / "outside" / "gamma",
    )


@pytest.fixture(scope="session")
def engine(models: Models):  # type: ignore[no-untyped-def]
    from evalhub.serving.local.engine import LocalEngine

    # CPU float32 everywhere: the greedy answers are compared with a float32 reference.
    engine = LocalEngine(models.base, device="cpu", allowed_root=models.adapter_root)
    engine.load_adapter("alpha", models.alpha)
    engine.load_adapter("beta", models.beta)
    return engine


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="session")
def base_url(engine) -> Iterator[str]:  # type: ignore[no-untyped-def]
    import uvicorn

    from evalhub.serving.local.server import create_local_app

    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_local_app(engine, BASE_NAME), log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the local backend did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def client(base_url: str):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    with OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def vllm_sized_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base the vLLM tests serve (head_dim 32: the CPU build's attention kernels take 32
    and up); built once per run, so the DoRA adapter below is trained on the very same files."""
    from evalhub.finetune.tiny import build_tiny_model

    return built_once(
        tmp_path_factory,
        "vllm-sized-base",
        lambda root: build_tiny_model(root, seed=0, hidden_size=128, pretrain_steps=150),
    )


@pytest.fixture(scope="session")
def dora_adapter(vllm_sized_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A really trained DoRA adapter (upper-casing, 40 steps): the kind vLLM refuses to load."""

    def train(root: Path) -> None:
        import torch

        from evalhub.finetune.config import TrainConfig
        from evalhub.finetune.tasks import upper_case_task
        from evalhub.finetune.trainer import Trainer

        torch.set_num_threads(1)
        config = TrainConfig(
            method="dora",
            method_options={"rank": 8},
            max_steps=40,
            batch_size=8,
            learning_rate=3e-3,
            warmup_ratio=0.1,
            seed=0,
        )
        result = Trainer(config, vllm_sized_base, root / "run").run(upper_case_task(320, seed=0))
        result.output_dir.rename(root / "adapter")

    return built_once(tmp_path_factory, "dora-adapter", train) / "adapter"
