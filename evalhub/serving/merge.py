"""Merging an adapter into its base, registered once as a base version of `<model>-merged`.

The merged version is a full Hugging Face model directory (the merged weights, the base's
config and tokenizer files), registered with the registry's ordinary `register_version`, tagged
with the adapter's and the base's digests, and linked from the adapter by a `merged_into`
lineage edge. The tags are the key: a second request for the same adapter digest finds the
version and merges nothing. A lock per adapter digest (a file lock under EVALHUB_HOME, which
excludes threads as well as processes since each takes it through its own open file, and on
PostgreSQL an advisory lock too, for processes on other machines) makes concurrent requests wait
for the first merge and then reuse it.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from evalhub.platform import Platform
from registry.entities import ModelKind, ModelVersion, VersionStatus
from registry.errors import ErrorCode, RegistryError, invalid

MERGED_SUFFIX = "-merged"
MERGED_FROM = "merged_from"  # tag: the adapter's digest
MERGED_BASE = "merged_base"  # tag: the base's digest
RELATION = "merged_into"

# Files save_pretrained writes for the merged model; everything else of the base (tokenizer,
# chat template, ...) is copied as it is.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")
_WRITTEN = {"config.json", "generation_config.json"}


@dataclass(frozen=True)
class Merged:
    version: ModelVersion
    adapter: ModelVersion
    created: bool


def merged_model_name(adapter: ModelVersion) -> str:
    return f"{adapter.model}{MERGED_SUFFIX}"


def find_merged(platform: Platform, adapter: ModelVersion) -> ModelVersion | None:
    """The ready merged version of exactly these adapter weights, if one is registered."""
    registry = platform.registry
    name = merged_model_name(adapter)
    try:
        registry.get_model(name)
    except RegistryError as error:
        if error.code is ErrorCode.NOT_FOUND:
            return None
        raise
    page_token: str | None = None
    while True:
        page = registry.search_versions(name, limit=200, page_token=page_token, status="ready")
        for version in page.data:
            if version.tags.get(MERGED_FROM) == adapter.digest:
                return version
        if page.next_page_token is None:
            return None
        page_token = page.next_page_token


def ensure_merged(platform: Platform, adapter: ModelVersion, *, actor: str = "") -> Merged:
    """The merged version of `adapter`: found by its digest, or merged and registered once."""
    if adapter.kind is not ModelKind.ADAPTER:
        raise invalid(f"{adapter.ref} is a base model version; only an adapter can be merged")
    if adapter.status is not VersionStatus.READY:
        raise RegistryError(
            ErrorCode.FAILED_PRECONDITION, f"{adapter.ref} is {adapter.status.value}, not ready"
        )
    found = find_merged(platform, adapter)
    if found is not None:
        return Merged(found, adapter, created=False)
    with _merge_lock(platform, adapter.digest):
        found = find_merged(platform, adapter)  # merged by whoever held the lock before us
        if found is not None:
            return Merged(found, adapter, created=False)
        return Merged(_merge_and_register(platform, adapter, actor), adapter, created=True)


def _merge_and_register(platform: Platform, adapter: ModelVersion, actor: str) -> ModelVersion:
    registry = platform.registry
    assert adapter.base is not None and adapter.base_digest is not None
    name = merged_model_name(adapter)
    try:
        model = registry.get_model(name)
    except RegistryError as error:
        if error.code is not ErrorCode.NOT_FOUND:
            raise
        model = registry.create_model(
            name,
            ModelKind.BASE,
            description=f"{adapter.model}'s adapters merged into their bases, for serving",
            actor=actor,
        )
    if model.kind is not ModelKind.BASE:
        raise invalid(
            f"model {name!r} exists and holds adapters; merged versions of {adapter.model} need "
            f"it to be a base model: rename or delete it"
        )
    adapter_dir = registry.artifacts.materialize(adapter.digest)
    base_dir = registry.artifacts.materialize(adapter.base_digest)
    work = platform.settings.home / "merges"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix="merge-") as scratch:
        out = merge_adapter(adapter_dir, base_dir, Path(scratch) / "model")
        version = registry.register_version(
            name,
            out,
            description=f"{adapter.ref} merged into {adapter.base} (peft merge_and_unload)",
            tags={
                MERGED_FROM: adapter.digest,
                MERGED_BASE: adapter.base_digest,
                "merged_from_ref": adapter.ref,
            },
            source=f"merge of {adapter.ref} into {adapter.base}",
            actor=actor,
        )
    registry.add_lineage_edge(
        ("model_version", adapter.ref),
        RELATION,
        ("model_version", version.ref),
        attributes={
            "adapter": adapter.ref,
            "adapter_digest": adapter.digest,
            "base": adapter.base,
            "base_digest": adapter.base_digest,
            "method": "peft merge_and_unload",
        },
    )
    return version


def merge_adapter(adapter_dir: Path, base_dir: Path, out: Path) -> Path:
    """Writes the adapter merged into its base to `out`: a full Hugging Face model directory.

    The merge is computed in float32 and saved in the base's own dtype.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    base_dtype = getattr(AutoConfig.from_pretrained(base_dir), "dtype", None)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    if isinstance(base_dtype, torch.dtype) and base_dtype != torch.float32:
        merged = merged.to(base_dtype)
    out.mkdir(parents=True)
    merged.save_pretrained(out)
    for path in sorted(base_dir.iterdir()):
        if (
            path.is_file()
            and path.name not in _WRITTEN
            and not path.name.endswith(_WEIGHT_SUFFIXES)
        ):
            shutil.copy2(path, out / path.name)
    return out


@contextmanager
def _merge_lock(platform: Platform, digest: str) -> Iterator[None]:
    """One merge of a digest at a time: threads, processes on this host, and PostgreSQL users."""
    hex_digest = digest.removeprefix("sha256:")
    locks = platform.settings.home / "merges" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    # flock belongs to the open file description: two open() calls exclude each other even in
    # one process, so this serialises threads as well as processes.
    with open(locks / f"{hex_digest}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            with _advisory_lock(platform, hex_digest):
                yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _advisory_lock(platform: Platform, hex_digest: str) -> Iterator[None]:
    """On PostgreSQL, a session advisory lock, for processes on other machines."""
    if platform.engine.dialect.name != "postgresql":
        yield
        return
    key = int.from_bytes(hashlib.sha256(f"merge:{hex_digest}".encode()).digest()[:8], "big")
    key -= 2**63  # a signed bigint
    with platform.engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()
