from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from registry.artifacts import (
    ArtifactStore,
    StoredBlob,
    StoredTree,
    TreeManifest,
    compute_tree,
    digest_file,
)
from registry.errors import ErrorCode, RegistryError


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


MODEL_FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": os.urandom(3 * 1024 * 1024 + 17),
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    "tokenizer/empty.txt": b"",
}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_files(tmp_path / "model", MODEL_FILES)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "store"))
    url = f"memory://evalhub-test-{uuid.uuid4().hex}"
    return ArtifactStore(url, cache_dir=tmp_path / "cache")


def listed(store: ArtifactStore, folder: str) -> list[str]:
    path = f"{store.root}/{folder}"
    if not store.fs.exists(path):
        return []
    return sorted(p[len(store.root) + 1 :] for p in store.fs.find(path))


def assert_same_files(directory: Path, files: dict[str, bytes]) -> None:
    found = {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file()
    }
    assert found == files


def corrupt(store: ArtifactStore, key: str) -> None:
    if store.is_local:
        os.chmod(key, 0o644)
    store.fs.pipe_file(key, b"bit rot")


# -- pure helpers ------------------------------------------------------------------------------


def test_digest_file_is_sha256_of_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    assert digest_file(path) == sha(b"hello")


def test_tree_digest_is_sha256_of_canonical_manifest(model_dir: Path) -> None:
    manifest = compute_tree(model_dir)
    expected_files = [
        {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
        for p, d in sorted(MODEL_FILES.items())
    ]
    canonical = json.dumps({"files": expected_files}, sort_keys=True, separators=(",", ":"))
    assert manifest.to_json() == canonical.encode()
    assert manifest.digest == sha(canonical.encode())
    assert manifest.file_count == 4
    assert manifest.size_bytes == sum(len(d) for d in MODEL_FILES.values())


def test_same_contents_give_same_digest_whatever_the_mtimes(tmp_path: Path) -> None:
    first = write_files(tmp_path / "a", MODEL_FILES)
    second = write_files(tmp_path / "b", dict(reversed(MODEL_FILES.items())))
    os.utime(second / "config.json", (1_000_000, 1_000_000))
    assert compute_tree(first).digest == compute_tree(second).digest
    (second / "config.json").write_bytes(b"{}")
    assert compute_tree(first).digest != compute_tree(second).digest


def test_renaming_a_file_changes_the_digest(tmp_path: Path) -> None:
    first = write_files(tmp_path / "a", {"x.bin": b"1"})
    second = write_files(tmp_path / "b", {"y.bin": b"1"})
    assert compute_tree(first).digest != compute_tree(second).digest


def test_symlink_inside_a_tree_is_refused(model_dir: Path) -> None:
    (model_dir / "link.json").symlink_to(model_dir / "config.json")
    with pytest.raises(RegistryError) as caught:
        compute_tree(model_dir)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert "link.json" in caught.value.message and "cp -rL" in caught.value.message


def test_symlinked_directory_inside_a_tree_is_refused(model_dir: Path, tmp_path: Path) -> None:
    write_files(tmp_path / "elsewhere", {"secret": b"s"})
    (model_dir / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(RegistryError, match="symbolic link"):
        compute_tree(model_dir)


def test_fifo_inside_a_tree_is_refused(model_dir: Path) -> None:
    os.mkfifo(model_dir / "pipe")
    with pytest.raises(RegistryError, match="not a regular file") as caught:
        compute_tree(model_dir)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT


def test_empty_and_missing_directories_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(RegistryError, match="holds no files"):
        compute_tree(tmp_path / "empty")
    with pytest.raises(RegistryError, match="not a directory") as caught:
        compute_tree(tmp_path / "missing")
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT


# -- blobs -------------------------------------------------------------------------------------


def test_put_file_stores_a_blob_once(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    seen: list[int] = []
    stored = store.put_file(path, progress=seen.append)
    assert stored == StoredBlob(
        digest=sha(data), size_bytes=len(data), uri=stored.uri, created=True
    )
    hex_digest = sha(data)[7:]
    assert stored.uri.endswith(f"blobs/{hex_digest[:2]}/{hex_digest}")
    assert sum(seen) == len(data) and len(seen) > 1
    assert store.has_blob(stored.digest)
    assert store.read_blob(stored.digest) == data
    assert listed(store, "tmp") == []

    again = store.put_file(path)
    assert again.created is False and again.digest == stored.digest
    assert listed(store, "blobs") == [f"blobs/{hex_digest[:2]}/{hex_digest}"]


def test_blob_path_is_a_local_verified_copy(store: ArtifactStore, tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"a": 1}\n')
    stored = store.put_file(path)
    local = store.blob_path(stored.digest)
    assert local.read_bytes() == b'{"a": 1}\n'
    assert store.blob_path(stored.digest) == local


def test_unknown_and_malformed_digests(store: ArtifactStore) -> None:
    missing = sha(b"never stored")
    for call in (store.read_blob, store.tree_manifest, store.materialize, store.blob_path):
        with pytest.raises(RegistryError) as caught:
            call(missing)
        assert caught.value.code is ErrorCode.NOT_FOUND
    for bad in ("abc", "sha256:xyz", "md5:" + "0" * 32, "sha256:" + "A" * 64):
        with pytest.raises(RegistryError, match="sha256:<64") as caught:
            store.has_blob(bad)
        assert caught.value.code is ErrorCode.INVALID_ARGUMENT


def test_corrupted_blob_is_detected_and_moved_aside(store: ArtifactStore, tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"original")
    stored = store.put_file(path)
    hex_digest = stored.digest[7:]
    corrupt(store, f"{store.root}/blobs/{hex_digest[:2]}/{hex_digest}")
    with pytest.raises(RegistryError, match="corrupted") as caught:
        store.read_blob(stored.digest)
    assert caught.value.code is ErrorCode.INTERNAL
    # Putting the same content again restores it.
    assert store.put_file(path).created is True
    assert store.read_blob(stored.digest) == b"original"


# -- trees -------------------------------------------------------------------------------------


def test_put_tree_stores_blobs_and_manifest(store: ArtifactStore, model_dir: Path) -> None:
    seen: list[int] = []
    stored = store.put_tree(model_dir, progress=seen.append)
    manifest = compute_tree(model_dir)
    assert stored.digest == manifest.digest
    assert stored.created is True
    assert stored.file_count == 4
    assert stored.size_bytes == manifest.size_bytes == sum(seen)
    assert sorted(stored.new_blobs) == sorted({sha(d) for d in MODEL_FILES.values()})
    assert stored.uri.endswith(f"trees/{manifest.digest[7:]}.json")
    assert store.has_tree(stored.digest)
    assert store.tree_manifest(stored.digest) == manifest
    raw = store.fs.cat_file(f"{store.root}/trees/{manifest.digest[7:]}.json")
    assert sha(raw) == stored.digest
    assert listed(store, "tmp") == []

    again = store.put_tree(model_dir)
    assert (again.created, again.new_blobs, again.digest) == (False, [], stored.digest)


def test_put_tree_deduplicates_blobs_across_trees(store: ArtifactStore, tmp_path: Path) -> None:
    first = write_files(tmp_path / "a", {"shared.bin": b"same", "a.txt": b"a"})
    second = write_files(tmp_path / "b", {"other/shared.bin": b"same", "b.txt": b"b"})
    store.put_tree(first)
    stored = store.put_tree(second)
    assert stored.created is True
    assert stored.new_blobs == [sha(b"b")]


def test_materialize_builds_a_verified_checkout_once(
    store: ArtifactStore, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = store.put_tree(model_dir)
    checkout = store.materialize(stored.digest)
    assert checkout.name == stored.digest[7:]
    assert_same_files(checkout, MODEL_FILES)
    if store.is_local:
        assert checkout.parent == Path(store.root) / "checkouts"
        blob = Path(store.root) / "blobs" / stored.new_blobs[0][7:9] / stored.new_blobs[0][7:]
        assert blob.stat().st_nlink >= 2  # hard-linked, not copied

    # The second call trusts the finished checkout instead of hashing every file again.
    hashed: list[bytes] = []
    original = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *data: hashed.append(b"") or original(*data))
    assert store.materialize(stored.digest) == checkout
    assert hashed == []
    monkeypatch.undo()
    assert [p.name for p in checkout.parent.iterdir() if p.name.startswith(".tmp")] == []


def test_materialize_refuses_a_corrupted_blob_and_leaves_no_checkout(
    store: ArtifactStore, model_dir: Path
) -> None:
    stored = store.put_tree(model_dir)
    hex_digest = sha(MODEL_FILES["tokenizer/vocab.txt"])[7:]
    corrupt(store, f"{store.root}/blobs/{hex_digest[:2]}/{hex_digest}")
    with pytest.raises(RegistryError, match="corrupted") as caught:
        store.materialize(stored.digest)
    assert caught.value.code is ErrorCode.INTERNAL
    assert not store.checkout_dir.exists() or list(store.checkout_dir.iterdir()) == []
    # Registering the same files again heals the store.
    assert store.put_tree(model_dir).new_blobs == [sha(MODEL_FILES["tokenizer/vocab.txt"])]
    assert_same_files(store.materialize(stored.digest), MODEL_FILES)


def test_tampered_manifest_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    entries = json.dumps(
        {"files": [{"path": "../escape", "sha256": "0" * 64, "size": 1}]},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    digest = sha(entries)
    store.fs.makedirs(f"{store.root}/trees", exist_ok=True)
    store.fs.pipe_file(f"{store.root}/trees/{digest[7:]}.json", entries)
    with pytest.raises(RegistryError, match="corrupted"):
        store.materialize(digest)
    assert not (tmp_path / "escape").exists()


def test_discard_removes_what_the_put_wrote(store: ArtifactStore, tmp_path: Path) -> None:
    kept = store.put_tree(write_files(tmp_path / "kept", {"shared.bin": b"same"}))
    refused = store.put_tree(write_files(tmp_path / "new", {"shared.bin": b"same", "n": b"n"}))
    assert refused.new_blobs == [sha(b"n")]
    store.discard(refused)
    assert not store.has_tree(refused.digest)
    assert not store.has_blob(sha(b"n"))
    assert store.has_tree(kept.digest) and store.has_blob(sha(b"same"))

    # A put that found everything present wrote nothing, so discarding it removes nothing.
    store.discard(StoredTree(kept.digest, 4, kept.uri, created=False, file_count=1, new_blobs=[]))
    assert store.has_tree(kept.digest)


def test_discard_keeps_blobs_another_tree_lists(store: ArtifactStore, tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"rows")
    blob = store.put_file(path)
    store.put_tree(write_files(tmp_path / "t", {"copy.jsonl": b"rows"}))
    store.discard(blob)
    assert store.has_blob(blob.digest)

    path.write_bytes(b"other rows")
    refused = store.put_file(path)
    store.discard(refused)
    assert not store.has_blob(refused.digest)
    assert listed(store, "blobs") == [f"blobs/{blob.digest[7:9]}/{blob.digest[7:]}"]


def test_concurrent_puts_of_the_same_tree_both_succeed(
    store: ArtifactStore, model_dir: Path
) -> None:
    results: list[StoredTree] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def put() -> None:
        try:
            barrier.wait()
            results.append(store.put_tree(model_dir))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=put) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {r.digest for r in results} == {compute_tree(model_dir).digest}
    assert sum(r.created for r in results) == 1
    written = [blob for r in results for blob in r.new_blobs]
    assert sorted(written) == sorted({sha(d) for d in MODEL_FILES.values()})
    assert listed(store, "tmp") == []

    checkouts: list[Path] = []
    threads = [
        threading.Thread(target=lambda: checkouts.append(store.materialize(results[0].digest)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(checkouts)) == 1 and len(checkouts) == 3
    assert_same_files(checkouts[0], MODEL_FILES)


def test_a_file_that_changes_while_stored_is_refused_and_leaves_nothing(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    import registry.artifacts as artifacts

    real = artifacts.compute_tree

    def compute_then_modify(directory: Path) -> TreeManifest:
        manifest = real(directory)
        (directory / "tokenizer" / "vocab.txt").write_bytes(b"changed")
        return manifest

    monkeypatch.setattr(artifacts, "compute_tree", compute_then_modify)
    with pytest.raises(RegistryError, match="changed while") as caught:
        store.put_tree(model_dir)
    assert caught.value.code is ErrorCode.CONFLICT
    assert listed(store, "blobs") == [] and listed(store, "trees") == []
    assert listed(store, "tmp") == []


def test_local_blobs_are_read_only(tmp_path: Path, model_dir: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    stored = store.put_tree(model_dir)
    checkout = store.materialize(stored.digest)
    assert not os.access(checkout / "config.json", os.W_OK) or os.geteuid() == 0
    assert (os.stat(checkout / "config.json").st_mode & 0o777) == 0o444


def test_materialize_of_a_big_tree_twice_is_fast(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    directory = write_files(tmp_path / "big", {"weights.bin": os.urandom(32 * 1024 * 1024)})
    digest = store.put_tree(directory).digest
    store.materialize(digest)
    started = time.perf_counter()
    store.materialize(digest)
    assert time.perf_counter() - started < 0.05
