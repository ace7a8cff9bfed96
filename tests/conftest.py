"""Shared fixtures: isolated databases (SQLite and PostgreSQL), platforms and real tiny models."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.scripted_server import start_scripted_server  # noqa: F401  (a fixture for every test)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
# pytest-xdist workers inherit the terminal's size, and rich fixes a console's width from it at
# import; the CLI tests set COLUMNS per call instead.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

POSTGRES_URL = os.environ.get(
    "EVALHUB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'evalhub.db'}"
        return
    yield from postgres_schema()


def postgres_schema() -> Iterator[str]:
    from registry.db import create_engine

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as error:  # the suite must not pass silently without PostgreSQL
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is needed for this test: {error}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    from evalhub.settings import Settings

    return Settings(home=tmp_path / "home", database_url=database_url, _env_file=None)


@pytest.fixture
def platform(settings):  # type: ignore[no-untyped-def]
    from evalhub.platform import Platform

    opened = Platform.open(settings)
    yield opened
    opened.close()


@pytest.fixture
def store(platform):  # type: ignore[no-untyped-def]
    return platform.registry


@pytest.fixture
def cli_env(platform) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The environment for `evalhub` commands run in-process on the test's platform."""
    return {
        "EVALHUB_HOME": str(platform.settings.home),
        "EVALHUB_DATABASE_URL": platform.settings.resolved_database_url,
        "EVALHUB_URL": "",
        "COLUMNS": "200",
    }


# -- real tiny models ----------------------------------------------------------------------------


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]
) -> Path:
    """A directory built by the first test process that asks, and shared by the others.

    Under pytest-xdist every worker has its own session; the models are the same bytes for all
    of them (fixed seeds), so one builds and the rest wait on the lock and reuse the result.
    """
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    target = root / "built-once" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if not (target.parent / f"{name}.done").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            build(target)
            (target.parent / f"{name}.done").touch()
    return target


def save_tiny_llama(directory: Path, *, hidden: int = 64, seed: int = 0) -> Path:
    """A random-weight Llama small enough to save in milliseconds; real files, real shapes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=300,
        max_position_embeddings=128,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def save_lora_adapter(
    base_dir: Path, directory: Path, *, base_name: str, rank: int = 4, seed: int = 0
) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"])
    )
    # Non-zero B so that the adapter really changes outputs.
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    peft_model.save_pretrained(directory)
    config_path = directory / "adapter_config.json"
    import json

    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_name
    config_path.write_text(json.dumps(config, indent=2))
    return directory


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two bases of different widths and adapters on each; built once per session."""

    def build(root: Path) -> None:
        base = save_tiny_llama(root / "base", hidden=64)
        wide = save_tiny_llama(root / "wide", hidden=96, seed=1)
        save_tiny_llama(root / "base_copy", hidden=64)
        save_lora_adapter(base, root / "adapter", base_name="tiny/1")
        save_lora_adapter(base, root / "adapter2", base_name="tiny/1", seed=2)
        save_lora_adapter(wide, root / "wide_adapter", base_name="wide/1")

    root = built_once(tmp_path_factory, "models", build)
    names = ("base", "base_copy", "wide", "adapter", "adapter2", "wide_adapter")
    return {name: root / name for name in names}
