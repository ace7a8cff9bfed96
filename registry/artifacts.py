"""Content-addressed artifact store: files and directory trees kept by sha256, on any fsspec root.

Layout under the root (a local directory, or any fsspec URL such as s3://bucket/prefix):

    blobs/<hex[:2]>/<hex>   one file's bytes, named by their sha256
    trees/<hex>.json        a directory: canonical JSON listing each file's path, sha256 and size;
                            <hex> is the sha256 of that JSON, so equal contents give equal digests
    tmp/<uuid>              writes in progress; renamed into place only once verified
    checkouts/<hex>/        (local stores) verified directories for transformers and vLLM to load

A name never changes meaning, so anything already present is never written again, and a reader
that checks the hash of what it reads can trust it: every read from the store (a checkout, a
blob copy, a manifest) is hashed on the way and refused with `CorruptArtifactError` when the
bytes are not the ones their name promises, so an object changed in a bucket never reaches a
model loader.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from registry.errors import ErrorCode, RegistryError, invalid, not_found

Progress = Callable[[int], None]

CHUNK_BYTES = 1024 * 1024
DIGEST_PREFIX = "sha256:"
_HEX = re.compile(r"[0-9a-f]{64}")
# fsspec protocols whose implementation an evalhub extra installs.
_EXTRAS = {"s3": "s3", "s3a": "s3"}


class CorruptArtifactError(RegistryError):
    """A stored object whose bytes do not hash to the digest it is stored under.

    `digest` is what the registry recorded, `actual` what the bytes read hash to, `subject`
    names the object (a blob, or a file of a tree), and `location` where it was found.
    """

    def __init__(self, subject: str, digest: str, actual: str, location: str, advice: str) -> None:
        super().__init__(
            ErrorCode.INTERNAL,
            f"{subject} is corrupted in the store: expected {digest}, but the bytes at "
            f"{location} hash to {actual}; {advice}",
        )
        self.subject = subject
        self.digest = digest
        self.actual = actual
        self.location = location
        self.advice = advice

    def about(self, what: str) -> CorruptArtifactError:
        """The same error with the registry object it belongs to (`model version tiny/1`)."""
        return CorruptArtifactError(
            f"{what}: {self.subject}", self.digest, self.actual, self.location, self.advice
        )


@dataclass(frozen=True)
class TreeEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class TreeManifest:
    """A directory's content address: its files sorted by path, and the digest of their listing."""

    digest: str
    entries: tuple[TreeEntry, ...]

    @property
    def size_bytes(self) -> int:
        return sum(entry.size for entry in self.entries)

    @property
    def file_count(self) -> int:
        return len(self.entries)

    def to_json(self) -> bytes:
        return _canonical_json(self.entries)

    @classmethod
    def from_entries(cls, entries: Iterable[TreeEntry]) -> TreeManifest:
        ordered = tuple(sorted(entries, key=lambda entry: entry.path))
        digest = DIGEST_PREFIX + hashlib.sha256(_canonical_json(ordered)).hexdigest()
        return cls(digest=digest, entries=ordered)


@dataclass(frozen=True)
class StoredBlob:
    digest: str
    size_bytes: int
    uri: str
    created: bool


@dataclass(frozen=True)
class StoredTree:
    digest: str
    size_bytes: int
    uri: str
    created: bool
    file_count: int
    new_blobs: list[str] = field(default_factory=list)


def digest_file(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes."""
    hasher = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            hasher.update(chunk)
    return DIGEST_PREFIX + hasher.hexdigest()


def compute_tree(directory: Path) -> TreeManifest:
    """Hashes every file under `directory`; only contents and relative paths count, not mtimes."""
    directory = Path(directory)
    if not directory.is_dir():
        raise invalid(f"{directory} is not a directory; pass the folder that holds the files")
    entries = [
        TreeEntry(path=relative, sha256=digest_file(path)[len(DIGEST_PREFIX) :], size=size)
        for relative, path, size in _walk_regular_files(directory)
    ]
    if not entries:
        raise invalid(f"{directory} holds no files; point at the folder that holds the model files")
    return TreeManifest.from_entries(entries)


class ArtifactStore:
    """Blobs and trees under one root; safe for several threads putting the same content.

    `cache_dir` is where a remote store downloads checkouts; a local store checks out in place.
    `storage_options` go to the fsspec filesystem (for s3://, s3fs's `endpoint_url`, `key`, ...);
    they may hold secrets, so they are never kept on the store or shown.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        cache_dir: Path | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = str(url)
        self.fs, root = _open_filesystem(self.url, dict(storage_options or {}))
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            self.checkout_dir = Path(self.root) / "checkouts"
        else:
            # Remote stores download into a local cache, since model loaders need local paths.
            self.checkout_dir = Path(cache_dir or Path.home() / ".cache" / "evalhub" / "artifacts")
        self._publish_lock = threading.Lock()
        self._checkout_locks: dict[Path, threading.Lock] = {}

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # -- writes ---------------------------------------------------------------------------------

    def put_file(self, path: Path, progress: Progress | None = None) -> StoredBlob:
        path = Path(path)
        if not path.is_file():
            raise invalid(f"{path} is not a file; pass the path of the file to store")
        digest = digest_file(path)
        hex_digest = _hex(digest)
        size = path.stat().st_size
        key = self._blob_key(hex_digest)
        created = False
        if self.fs.exists(key):
            _report(progress, size)
        else:
            with path.open("rb") as source:
                created = self._write_verified(source, hex_digest, key, progress)
        return StoredBlob(digest=digest, size_bytes=size, uri=self._uri(key), created=created)

    def put_tree(self, directory: Path, progress: Progress | None = None) -> StoredTree:
        """Stores a directory; `progress` gets byte counts, skipped duplicates included."""
        directory = Path(directory)
        manifest = compute_tree(directory)
        new_blobs: list[str] = []
        try:
            for entry in manifest.entries:
                key = self._blob_key(entry.sha256)
                if self.fs.exists(key):
                    _report(progress, entry.size)
                    continue
                with (directory / entry.path).open("rb") as source:
                    if self._write_verified(source, entry.sha256, key, progress):
                        new_blobs.append(DIGEST_PREFIX + entry.sha256)
            tree_key = self._tree_key(_hex(manifest.digest))
            created = False
            if not self.fs.exists(tree_key):
                listing = io.BytesIO(manifest.to_json())
                created = self._write_verified(listing, _hex(manifest.digest), tree_key, None)
        except BaseException:
            self._remove_unreferenced_blobs(new_blobs)
            raise
        return StoredTree(
            digest=manifest.digest,
            size_bytes=manifest.size_bytes,
            uri=self._uri(tree_key),
            created=created,
            file_count=manifest.file_count,
            new_blobs=new_blobs,
        )

    def discard(self, stored: StoredTree | StoredBlob) -> None:
        """Undoes a put whose database transaction was refused, so the request leaves no file.

        Blobs that another tree's manifest lists are kept. The caller must not discard a digest
        that a committed row references (a concurrent put of the same content may have committed).
        """
        if isinstance(stored, StoredBlob):
            if stored.created:
                self._remove_unreferenced_blobs([stored.digest])
            return
        if stored.created:
            self._remove(self._tree_key(_hex(stored.digest)))
        self._remove_unreferenced_blobs(stored.new_blobs)

    # -- reads ----------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        return bool(self.fs.exists(self._blob_key(_hex(digest))))

    def has_tree(self, digest: str) -> bool:
        return bool(self.fs.exists(self._tree_key(_hex(digest))))

    def read_blob(self, digest: str) -> bytes:
        hex_digest = _hex(digest)
        key = self._blob_key(hex_digest)
        try:
            data = bytes(self.fs.cat_file(key))
        except FileNotFoundError:
            raise not_found(
                f"artifact {digest} is not in the store at {self.url}; register it first"
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != hex_digest:
            raise self._corrupted(key, f"blob {digest}", digest, actual)
        return data

    def tree_manifest(self, digest: str) -> TreeManifest:
        hex_digest = _hex(digest)
        key = self._tree_key(hex_digest)
        try:
            data = self.fs.cat_file(key)
        except FileNotFoundError:
            raise not_found(
                f"tree {digest} is not in the store at {self.url}; register the directory first"
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != hex_digest:
            raise self._corrupted(key, f"the manifest of tree {digest}", digest, actual)
        manifest = _parse_manifest(data)
        if manifest is None or manifest.digest != digest:
            raise self._corrupted(key, f"the manifest of tree {digest}", digest, actual)
        return manifest

    def materialize(self, digest: str) -> Path:
        """A local directory with the tree's files, verified once, for model loaders to read."""
        final = self.checkout_dir / _hex(digest)
        # A checkout only ever appears by renaming a fully verified build, so its presence is proof.
        if final.is_dir():
            return final
        # One download per checkout in this process; other processes race harmlessly.
        with self._checkout_lock(final):
            if final.is_dir():
                return final
            manifest = self.tree_manifest(digest)
            with _Building(final) as building:
                for entry in manifest.entries:
                    target = building / entry.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self._fetch_blob(entry.sha256, target, f"file {entry.path} of tree {digest}")
        return final

    def blob_path(self, digest: str) -> Path:
        """A local verified copy of one blob (a dataset file), verified once like a checkout."""
        hex_digest = _hex(digest)
        final = self.checkout_dir / "blobs" / hex_digest
        if final.is_file():
            return final
        if not self.fs.exists(self._blob_key(hex_digest)):
            raise not_found(
                f"artifact {digest} is not in the store at {self.url}; register it first"
            )
        with self._checkout_lock(final):
            if final.is_file():
                return final
            with _Building(final) as building:
                self._fetch_blob(hex_digest, building, f"blob {digest}")
        return final

    # -- machinery ------------------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _blob_key(self, hex_digest: str) -> str:
        return self._join("blobs", hex_digest[:2], hex_digest)

    def _tree_key(self, hex_digest: str) -> str:
        return self._join("trees", f"{hex_digest}.json")

    def _uri(self, key: str) -> str:
        return str(self.fs.unstrip_protocol(key))

    def _write_verified(
        self, source: BinaryIO, hex_digest: str, key: str, progress: Progress | None
    ) -> bool:
        """Copies to tmp/, checks the digest and size of what was written, then publishes it.

        Returns False when another writer published the same content first.
        """
        tmp = self._join("tmp", uuid.uuid4().hex)
        self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
        try:
            hasher = hashlib.sha256()
            written = 0
            with self.fs.open(tmp, "wb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    out.write(chunk)
                    hasher.update(chunk)
                    written += len(chunk)
                    _report(progress, len(chunk))
            if hasher.hexdigest() != hex_digest:
                raise RegistryError(
                    ErrorCode.CONFLICT,
                    f"a file changed while it was being stored (expected sha256:{hex_digest}, "
                    f"read sha256:{hasher.hexdigest()}); stop whatever writes to it and retry",
                )
            kept = self.fs.size(tmp)
            if kept != written:
                raise RegistryError(
                    ErrorCode.INTERNAL,
                    f"the artifact store at {self.url} kept {kept} of {written} bytes; "
                    "check its free space and retry",
                )
            return self._publish(tmp, key)
        finally:
            self._remove(tmp)

    def _publish(self, tmp: str, key: str) -> bool:
        self.fs.makedirs(posixpath.dirname(key), exist_ok=True)
        if self.is_local:
            # Stored files never change; read-only also protects blobs hardlinked into checkouts.
            os.chmod(tmp, 0o444)
            try:
                # link() fails if the name exists: an atomic create-if-absent across processes.
                os.link(tmp, key)
                return True
            except FileExistsError:
                return False
            except OSError:
                pass  # a filesystem without hard links: fall back to check-then-move below
        with self._publish_lock:
            if self.fs.exists(key):
                return False
            self.fs.mv(tmp, key)
            return True

    def _checkout_lock(self, final: Path) -> threading.Lock:
        with self._publish_lock:
            return self._checkout_locks.setdefault(final, threading.Lock())

    def _remove(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(key)

    def _remove_unreferenced_blobs(self, digests: list[str]) -> None:
        if not digests:
            return
        referenced = self._blobs_listed_in_trees()
        for digest in digests:
            hex_digest = _hex(digest)
            if hex_digest not in referenced:
                self._remove(self._blob_key(hex_digest))

    def _blobs_listed_in_trees(self) -> set[str]:
        trees = self._join("trees")
        if not self.fs.exists(trees):
            return set()
        listed: set[str] = set()
        for key in self.fs.find(trees):
            try:
                manifest = _parse_manifest(self.fs.cat_file(key))
            except FileNotFoundError:
                continue  # discarded concurrently
            if manifest is not None:
                listed.update(entry.sha256 for entry in manifest.entries)
        return listed

    def _fetch_blob(self, hex_digest: str, target: Path, subject: str) -> None:
        """Puts a verified copy of a blob at `target`: a hard link where it can, else a copy.

        A remote blob is hashed as it streams into the cache; the caller builds `target` under
        a temporary name, so a refused copy leaves nothing behind.
        """
        key = self._blob_key(hex_digest)
        if self.is_local:
            try:
                os.link(key, target)
            except FileNotFoundError:
                raise self._missing_blob(hex_digest) from None
            except OSError:
                pass  # another filesystem, or no hard links: copy below
            else:
                actual = digest_file(target)[len(DIGEST_PREFIX) :]
                if actual != hex_digest:
                    raise self._corrupted(key, subject, DIGEST_PREFIX + hex_digest, actual)
                return
        hasher = hashlib.sha256()
        try:
            with self.fs.open(key, "rb") as source, target.open("wb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    out.write(chunk)
                    hasher.update(chunk)
        except FileNotFoundError:
            raise self._missing_blob(hex_digest) from None
        if hasher.hexdigest() != hex_digest:
            raise self._corrupted(key, subject, DIGEST_PREFIX + hex_digest, hasher.hexdigest())

    def _corrupted(
        self, key: str, subject: str, digest: str, actual_hex: str
    ) -> CorruptArtifactError:
        """Moves a damaged file aside so that putting the same content again restores it."""
        aside = self._join("corrupt", f"{posixpath.basename(key)}.{uuid.uuid4().hex}")
        try:
            self.fs.makedirs(posixpath.dirname(aside), exist_ok=True)
            self.fs.mv(key, aside)
            advice = (
                f"it was moved to {self._uri(aside)}; register the same files again to restore it"
            )
        except OSError:
            advice = f"delete {self._uri(key)} and register the same files again to restore it"
        return CorruptArtifactError(
            subject,
            digest,
            DIGEST_PREFIX + actual_hex,
            self._uri(key),
            advice + ", or restore the store from a backup",
        )

    def _missing_blob(self, hex_digest: str) -> RegistryError:
        return RegistryError(
            ErrorCode.INTERNAL,
            f"the store at {self.url} lacks blob sha256:{hex_digest} that a tree lists; register "
            "the same files again to restore it, or restore the store from a backup",
        )


def _open_filesystem(url: str, options: dict[str, Any]) -> tuple[Any, str]:
    """The fsspec filesystem and root path of `url`; a missing implementation names its install."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in _EXTRAS:
        # Several machines write the bucket: a cached listing would hide their objects, and the
        # store only asks about single names (HEAD requests), so listings are never cached.
        options.setdefault("use_listings_cache", False)
    try:
        filesystem, root = url_to_fs(url, **options)
    except ImportError as error:
        if protocol in _EXTRAS:
            raise RegistryError(
                ErrorCode.FAILED_PRECONDITION,
                f"the artifact store {url} needs the {protocol}:// filesystem: "
                f"pip install 'evalhub[{_EXTRAS[protocol]}]'",
            ) from None
        raise RegistryError(
            ErrorCode.FAILED_PRECONDITION, f"the artifact store {url} needs a package: {error}"
        ) from None
    except ValueError as error:  # an unknown protocol
        raise invalid(f"the artifact store {url} is not a usable fsspec URL: {error}") from None
    return filesystem, str(root)


class _Building:
    """Builds `final` under a temporary sibling name and renames it into place on success.

    Two builders racing for the same name both succeed: the loser drops its copy.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        self.temporary = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex}"

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        return self.temporary

    def __exit__(self, error_type: object, error: object, traceback: object) -> None:
        try:
            if error_type is None:
                try:
                    self.temporary.rename(self.final)
                except OSError:
                    if not self.final.exists():
                        raise
        finally:
            if self.temporary.is_dir():
                shutil.rmtree(self.temporary, ignore_errors=True)
            elif self.temporary.exists():
                self.temporary.unlink()


def _walk_regular_files(root: Path) -> Iterator[tuple[str, Path, int]]:
    """(relative posix path, path, size) of each file; refuses links and special files."""
    pending = [root]
    while pending:
        current = pending.pop()
        with os.scandir(current) as listing:
            for item in listing:
                path = Path(item.path)
                relative = path.relative_to(root).as_posix()
                if item.is_symlink():
                    raise invalid(
                        f"{relative} in {root} is a symbolic link; the store keeps regular files "
                        "only: copy the folder with `cp -rL` (or download with --local-dir) and "
                        "register the copy"
                    )
                if item.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif item.is_file(follow_symlinks=False):
                    try:
                        relative.encode("utf-8")
                    except UnicodeEncodeError:
                        raise invalid(
                            f"{relative!r} in {root} is not a UTF-8 file name; rename it"
                        ) from None
                    yield relative, path, item.stat(follow_symlinks=False).st_size
                else:
                    raise invalid(
                        f"{relative} in {root} is not a regular file (a pipe, socket or device); "
                        "remove it and retry"
                    )


def _canonical_json(entries: Iterable[TreeEntry]) -> bytes:
    files = [{"path": e.path, "sha256": e.sha256, "size": e.size} for e in entries]
    return json.dumps({"files": files}, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _parse_manifest(data: bytes) -> TreeManifest | None:
    """The manifest in `data`, or None unless it is a canonical one with safe relative paths."""
    try:
        files = json.loads(data)["files"]
        entries = [
            TreeEntry(path=item["path"], sha256=item["sha256"], size=item["size"]) for item in files
        ]
    except (ValueError, KeyError, TypeError):
        return None
    if not entries:
        return None
    for entry in entries:
        if not (
            isinstance(entry.path, str)
            and _is_safe_relative(entry.path)
            and isinstance(entry.sha256, str)
            and _HEX.fullmatch(entry.sha256)
            and isinstance(entry.size, int)
            and entry.size >= 0
        ):
            return None
    manifest = TreeManifest.from_entries(entries)
    return manifest if manifest.to_json() == data else None


def _is_safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and "\x00" not in path and all(p not in ("", ".", "..") for p in parts)


def _hex(digest: str) -> str:
    if not isinstance(digest, str) or not digest.startswith(DIGEST_PREFIX):
        raise invalid(f"invalid digest {digest!r}: write it as 'sha256:<64 hex digits>'")
    hex_digest = digest[len(DIGEST_PREFIX) :]
    if not _HEX.fullmatch(hex_digest):
        raise invalid(f"invalid digest {digest!r}: write it as 'sha256:<64 lowercase hex digits>'")
    return hex_digest


def _report(progress: Progress | None, count: int) -> None:
    if progress is not None and count:
        progress(count)
