"""Artifacts on S3: a real S3 API (moto's standalone server on 127.0.0.1) through s3fs.

Two platforms share one database and one bucket, each with its own EVALHUB_HOME, as two machines
would: what one registers the other materializes from the bucket, verified by digest.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from registry.artifacts import ArtifactStore, CorruptArtifactError, compute_tree, digest_file
from registry.errors import ErrorCode, RegistryError
from tests.conftest import SECRET, Bucket, built_once, save_tiny_llama

pytestmark = pytest.mark.xdist_group("registry-s3")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once(tmp_path_factory, "s3-tiny-llama", save_tiny_llama)


@pytest.fixture
def chats(tmp_path: Path) -> Path:
    path = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(5)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def open_home(home: Path, database_url: str, artifact_url: str, options: str | None = None):  # type: ignore[no-untyped-def]
    """A platform on its own home (its own local cache) over the shared database and bucket."""
    from evalhub.platform import Platform
    from evalhub.settings import Settings

    settings = Settings(
        home=home,
        database_url=database_url,
        artifact_url=artifact_url,
        artifact_options=options,
        _env_file=None,
    )
    return Platform.open(settings)


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_second_home_materializes_the_same_bytes(
    database_url: str,
    bucket: Bucket,
    tiny_llama: Path,
    chats: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = open_home(tmp_path / "first", database_url, bucket.url)
    try:
        first.registry.create_model("tiny", "base")
        version = first.registry.register_version("tiny", tiny_llama)
        dataset, _ = first.registry.add_dataset_version("chats", chats, format="chat", create=True)
    finally:
        first.close()
    assert version.artifact_uri == f"{bucket.url}/trees/{version.digest[7:]}.json"
    assert dataset.artifact_uri == f"s3://{bucket.name}/{bucket.blob_key(dataset.digest)}"
    assert bucket.keys("tmp") == []

    # The second machine is configured by EVALHUB_ARTIFACT_OPTIONS alone, no AWS_* variables.
    for variable in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable)
    second = open_home(tmp_path / "second", database_url, bucket.url, bucket.artifact_options)
    try:
        assert SECRET not in repr(second.settings) and SECRET not in repr(second.registry)
        assert files_under(tmp_path / "second" / "cache") == []
        model_dir = second.registry.model_path("tiny/1")
        dataset_file = second.registry.dataset_path("chats/1")
    finally:
        second.close()

    assert model_dir.is_relative_to(tmp_path / "second" / "cache")
    assert compute_tree(model_dir).digest == version.digest
    originals = {path.relative_to(tiny_llama) for path in files_under(tiny_llama)}
    assert {path.relative_to(model_dir) for path in files_under(model_dir)} == originals
    for relative in originals:
        assert (model_dir / relative).read_bytes() == (tiny_llama / relative).read_bytes()
    assert dataset_file.read_bytes() == chats.read_bytes()
    assert digest_file(dataset_file) == dataset.digest


def test_a_corrupted_object_is_refused_and_leaves_nothing_in_the_cache(
    database_url: str, bucket: Bucket, tiny_llama: Path, chats: Path, tmp_path: Path
) -> None:
    first = open_home(tmp_path / "first", database_url, bucket.url)
    try:
        first.registry.create_model("tiny", "base")
        first.registry.register_version("tiny", tiny_llama)
        first.registry.add_dataset_version("chats", chats, format="chat", create=True)
    finally:
        first.close()
    weights = digest_file(tiny_llama / "model.safetensors")
    dataset = digest_file(chats)
    # Someone replaces the objects in the bucket directly.
    bucket.client.put_object(Bucket=bucket.name, Key=bucket.blob_key(weights), Body=b"not it")
    bucket.client.put_object(Bucket=bucket.name, Key=bucket.blob_key(dataset), Body=b"{}\n")

    second = open_home(tmp_path / "second", database_url, bucket.url)
    try:
        with pytest.raises(CorruptArtifactError) as model_error:
            second.registry.model_path("tiny/1")
        with pytest.raises(CorruptArtifactError) as dataset_error:
            second.registry.dataset_path("chats/1")
    finally:
        second.close()

    message = str(model_error.value)
    assert model_error.value.code is ErrorCode.INTERNAL
    assert (model_error.value.digest, model_error.value.actual) == (weights, sha(b"not it"))
    assert message.startswith("model version tiny/1: file model.safetensors of tree sha256:")
    assert weights in message and sha(b"not it") in message
    assert (dataset_error.value.digest, dataset_error.value.actual) == (dataset, sha(b"{}\n"))
    assert str(dataset_error.value).startswith(f"dataset version chats/1: blob {dataset}")
    # Nothing half-written: no checkout, no blob copy, no temporary file.
    assert files_under(tmp_path / "second" / "cache") == []
    # The damaged objects were moved aside, so the same files registered again restore them.
    assert len(bucket.keys("corrupt")) == 2
    restorer = ArtifactStore(bucket.url, cache_dir=tmp_path / "third")
    restorer.put_tree(tiny_llama)
    restored = restorer.materialize(compute_tree(tiny_llama).digest)
    assert (restored / "model.safetensors").read_bytes() == (
        tiny_llama / "model.safetensors"
    ).read_bytes()


def test_the_same_content_registered_twice_is_stored_once(
    bucket: Bucket, tiny_llama: Path, chats: Path, tmp_path: Path
) -> None:
    platform = open_home(tmp_path / "home", f"sqlite:///{tmp_path / 'evalhub.db'}", bucket.url)
    try:
        registry = platform.registry
        registry.create_model("tiny", "base")
        registry.create_model("twin", "base")
        first = registry.register_version("tiny", tiny_llama)
        again = registry.register_version("tiny", tiny_llama)
        twin = registry.register_version("twin", tiny_llama)
        registry.add_dataset_version("chats", chats, format="chat", create=True)
        registry.add_dataset_version("copies", chats, format="chat", create=True)
    finally:
        platform.close()
    assert (again.version, twin.version) == (2, 1)
    assert first.digest == again.digest == twin.digest
    files = files_under(tiny_llama)
    assert len(bucket.keys("trees")) == 1
    assert len(bucket.keys("blobs")) == len(files) + 1  # the model's files and the dataset
    assert bucket.keys("tmp") == []


def test_a_missing_s3fs_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from fsspec.registry import _registry  # the loaded implementations, by protocol

    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` now fails
    monkeypatch.delitem(_registry, "s3", raising=False)
    with pytest.raises(RegistryError) as caught:
        ArtifactStore("s3://bucket/prefix")
    assert caught.value.code is ErrorCode.FAILED_PRECONDITION
    assert "pip install 'evalhub[s3]'" in caught.value.message


def test_artifact_options_must_be_a_json_object_and_are_never_echoed(tmp_path: Path) -> None:
    from evalhub.settings import Settings

    settings = Settings(home=tmp_path, artifact_options=f'{{"secret": "{SECRET}"', _env_file=None)
    assert SECRET not in repr(settings)
    with pytest.raises(ValueError, match="must be a JSON object") as caught:
        _ = settings.resolved_artifact_options
    assert SECRET not in str(caught.value)
