"""Shared fixtures: isolated databases (SQLite and PostgreSQL), platforms and real tiny models."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.ray_cluster import ray_head  # noqa: F401  (a fixture for every test)
from tests.scripted_server import start_scripted_server  # noqa: F401  (a fixture for every test)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
# pytest-xdist workers inherit the terminal's size, and rich fixes a console's width from it at
# import; the CLI tests set COLUMNS per call instead.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)


def pytest_configure(config: pytest.Config) -> None:
    """One build cache for the run, which the xdist workers and every process they start inherit:
    the tiny base that fixtures, README sections and the demo build alike is pretrained once
    (`cached_tiny_model`). Fresh per run, so no run reuses another's builds."""
    if hasattr(config, "workerinput"):
        return
    cache = Path(tempfile.mkdtemp(prefix="evalhub-test-cache-"))
    os.environ["XDG_CACHE_HOME"] = str(cache)
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


def tiny_base_copy(directory: Path) -> Path:
    """The default tiny base (seed 0), copied from the run's build cache."""
    from evalhub.finetune.tiny import cached_tiny_model

    shutil.copytree(cached_tiny_model(seed=0), directory, dirs_exist_ok=True)
    return directory


POSTGRES_URL = os.environ.get(
    "EVALHUB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


# The longest tests start first: at the end of the run they would keep one worker busy while the
# others have nothing left to take (a prefix of node ids: a module, or one test of it).
FIRST = (
    "tests/test_demo.py",
    "tests/docs/test_readme.py::test_readme_section[Fine-tuning",
    "tests/dashboard/test_annotate_cli.py",
    "tests/serving/test_vllm.py",
    "tests/docs/test_readme.py::test_readme_section[The serve plan",
    "tests/docs/test_readme.py::test_readme_section[A Ray cluster",
)


def _start_order(item: pytest.Item) -> int:
    """An item's place in FIRST, or after them all."""
    return next((i for i, path in enumerate(FIRST) if item.nodeid.startswith(path)), len(FIRST))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make `--dist loadgroup` keep each `xdist_group` on one worker under pytest 9.2.

    xdist's scheduler groups the node ids a worker reports by their suffix "@GROUP", which the
    worker adds by assigning `item._nodeid` (xdist 3.8, remote.py). pytest 9.2 keeps an item's id
    in `item._id` (a structured NodeId) and `item.nodeid` reads that, so the assignment is lost:
    no id carries a group, and the expensive session fixtures of the "dashboard" and "vllm" groups
    were built on both workers. Here the suffix is added where pytest 9.2 reads it. This does
    nothing where the id already ends with it (pytest 8, or an xdist that is fixed), and stops
    the run if a later pytest moves the id again.

    First, the modules in FIRST move to the front (a stable sort: the rest keep their order).
    """
    items.sort(key=_start_order)
    if not config.getoption("loadgroup", False):  # only set in an xdist worker under loadgroup
        return
    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        suffix = "@" + "_".join(sorted(names))
        if not names or item.nodeid.endswith(suffix):
            continue
        from _pytest.nodeid import NodeId  # pytest 9.2; older pytest never gets here

        item._id = NodeId.parse(item.nodeid + suffix)
        if not item.nodeid.endswith(suffix):  # never silently ungrouped again
            raise pytest.UsageError(f"xdist_group is not honoured: update {__file__}")


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


# -- S3: moto's standalone server, a real S3 API on 127.0.0.1 --------------------------------------

S3_PREFIX = "evalhub/artifacts"
KEY_ID = "evalhub-test-key"
# A distinctive secret, to show it never appears in a setting's repr or an error.
SECRET = "moto-secret-never-shown"


@dataclass
class Bucket:
    name: str
    endpoint: str
    client: Any  # a boto3 S3 client, for reading and damaging objects behind evalhub's back

    @property
    def url(self) -> str:
        return f"s3://{self.name}/{S3_PREFIX}"

    @property
    def artifact_options(self) -> str:
        """EVALHUB_ARTIFACT_OPTIONS for this bucket: all a machine needs besides the URL."""
        return json.dumps({"endpoint_url": self.endpoint, "key": KEY_ID, "secret": SECRET})

    def keys(self, folder: str) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.name, Prefix=f"{S3_PREFIX}/{folder}/")
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def blob_key(self, digest: str) -> str:
        hex_digest = digest.removeprefix("sha256:")
        return f"{S3_PREFIX}/blobs/{hex_digest[:2]}/{hex_digest}"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone S3 server on a free port of 127.0.0.1, for the module that asks."""
    from moto.server import ThreadedMotoServer

    # Its request log (werkzeug's, at INFO) would fill every failure report.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    """A fresh bucket; the endpoint and credentials in the AWS_* variables boto3 users set."""
    import boto3
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Nothing from the machine's own AWS configuration.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("s3")
    name = f"evalhub-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    try:
        yield Bucket(name=name, endpoint=s3_endpoint, client=client)
    finally:
        # s3fs keeps filesystems per options; the next test's server may be another.
        s3fs.S3FileSystem.clear_instance_cache()


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
