"""Uploaded files and archives: size-limited as they arrive, and no path inside an archive is trusted.

An archive is unpacked into a temporary folder beside its destination and renamed into place only
when every member passed, so a refused upload leaves nothing behind.
"""

from __future__ import annotations

import functools
import lzma
import re
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO, Protocol, TypeVar

from registry.errors import ErrorCode, RegistryError, invalid

CHUNK_BYTES = 1024 * 1024
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
# Finder adds resource forks under this folder to every zip it makes; they are never model files.
MACOS_METADATA = "__MACOSX"

_DRIVE = re.compile(r"^[A-Za-z]:")
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)
_REPACK_HINT = "pack the folder again with `tar -czf model.tar.gz model/` (or `evalhub` does it)"

T = TypeVar("T")


class AsyncReadable(Protocol):
    """What an upload needs: starlette's UploadFile fits."""

    async def read(self, size: int = -1) -> bytes: ...


async def save_upload(upload: AsyncReadable, dest: Path, max_bytes: int) -> int:
    """Writes an upload to `dest` in chunks; refuses it as soon as it passes `max_bytes`."""
    declared = getattr(upload, "size", None)
    if isinstance(declared, int) and declared > max_bytes:
        raise _upload_too_large(max_bytes)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with dest.open("wb") as out:
            while chunk := await upload.read(CHUNK_BYTES):
                written += len(chunk)
                if written > max_bytes:
                    raise _upload_too_large(max_bytes)
                # A 1 MiB write lands in the page cache; a thread hop per chunk costs more.
                out.write(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return written


def save_stream(fileobj: BinaryIO, dest: Path, max_bytes: int) -> int:
    """`save_upload` for a synchronous file object."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with dest.open("wb") as out:
            while chunk := fileobj.read(CHUNK_BYTES):
                written += len(chunk)
                if written > max_bytes:
                    raise _upload_too_large(max_bytes)
                out.write(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return written


def extract_archive(archive: Path, dest: Path, *, max_bytes: int, max_members: int) -> Path:
    """Unpacks a tar (any compression) or zip, detected by content, into `dest`.

    Returns the folder the user packed: the single top-level directory when the archive holds
    only that, else `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} must not exist, or be an empty directory")
    staging = dest.parent / f".{dest.name}.unpacking-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        tree = _Tree(staging, _Budget(max_bytes=max_bytes, max_members=max_members))
        if _looks_like_zip(archive):
            _extract_zip(archive, tree)
        else:
            _extract_tar(archive, tree)
        if tree.file_count == 0:
            raise invalid(f"the archive holds no files; {_REPACK_HINT}")
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    top_level = list(dest.iterdir())
    if len(top_level) == 1 and top_level[0].is_dir():
        return top_level[0]
    return dest


def pack_directory(directory: Path, out: Path) -> Path:
    """A tar of the directory's regular files under its own name, for the CLI to upload.

    Not compressed: model weights hardly compress, and gzip, even at level 1, spent 15 s of CPU
    on a 540 MB model (SmolLM2-135M in float32) to save a few percent of the bytes.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise invalid(f"{directory} is not a directory; pass the folder to upload")
    top = directory.resolve().name or "upload"
    files: list[Path] = []
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            raise invalid(
                f"{path} is a symbolic link; uploads hold regular files only: copy the folder "
                "with `cp -rL` and upload the copy"
            )
        if path.is_file():
            files.append(path)
        elif not path.is_dir():
            raise invalid(f"{path} is not a regular file (a pipe, socket or device); remove it")
    if not files:
        raise invalid(f"{directory} holds no files; pass the folder that holds the model files")
    out = Path(out)
    partial = out.with_name(f".{out.name}.{uuid.uuid4().hex}.partial")
    try:
        with tarfile.open(partial, "w") as tar:
            for path in files:
                info = tar.gettarinfo(
                    path, arcname=f"{top}/{path.relative_to(directory).as_posix()}"
                )
                info.mode, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, "", ""
                with path.open("rb") as source:
                    tar.addfile(info, source)
        partial.replace(out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out


class _Budget:
    """Counts members and bytes really written, and refuses the archive past either limit."""

    def __init__(self, max_bytes: int, max_members: int) -> None:
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.members = 0
        self.bytes = 0

    def check_members(self, count: int) -> None:
        if count > self.max_members:
            raise RegistryError(
                ErrorCode.TOO_LARGE,
                f"the archive holds more than {self.max_members} members; upload fewer files, "
                "or ask the operator to raise EVALHUB_MAX_ARCHIVE_MEMBERS",
            )

    def add_member(self) -> None:
        self.members += 1
        self.check_members(self.members)

    def check_bytes(self, total: int) -> None:
        if total > self.max_bytes:
            raise RegistryError(
                ErrorCode.TOO_LARGE,
                f"the archive unpacks to more than {_human(self.max_bytes)}; upload a smaller "
                "archive, or ask the operator to raise EVALHUB_MAX_UPLOAD_BYTES",
            )

    def expect(self, declared: int) -> None:
        """Refuses early on what a header declares; `add` still counts the real bytes."""
        self.check_bytes(self.bytes + declared)

    def add(self, count: int) -> None:
        self.bytes += count
        self.check_bytes(self.bytes)


class _Tree:
    """Writes members under `root` by validated relative parts only; never follows a path."""

    def __init__(self, root: Path, budget: _Budget) -> None:
        self.root = root
        self.budget = budget
        self.files: set[tuple[str, ...]] = set()
        self.dirs: set[tuple[str, ...]] = set()

    @property
    def file_count(self) -> int:
        return len(self.files)

    def add_dir(self, name: str, parts: tuple[str, ...]) -> None:
        if parts in self.files:
            raise invalid(f"archive member {name!r} is both a file and a folder; {_REPACK_HINT}")
        self._make_dirs(name, parts)

    def add_file(self, name: str, parts: tuple[str, ...], source: IO[bytes]) -> None:
        if not parts:
            raise invalid(f"archive member {name!r} is a file without a name; {_REPACK_HINT}")
        if parts in self.files or parts in self.dirs:
            raise invalid(f"archive member {name!r} appears twice; {_REPACK_HINT}")
        self._make_dirs(name, parts[:-1])
        self.files.add(parts)
        with self.root.joinpath(*parts).open("xb") as out:
            while chunk := _reading(lambda: source.read(CHUNK_BYTES)):
                self.budget.add(len(chunk))  # counted before writing: never past the limit
                out.write(chunk)

    def _make_dirs(self, name: str, folder_parts: tuple[str, ...]) -> None:
        for depth in range(1, len(folder_parts) + 1):
            folder = folder_parts[:depth]
            if folder in self.files:
                raise invalid(
                    f"archive member {name!r} sits inside {'/'.join(folder)!r}, which is a file; "
                    f"{_REPACK_HINT}"
                )
            if folder not in self.dirs:
                self.root.joinpath(*folder).mkdir(exist_ok=True)
                self.dirs.add(folder)


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:*")
    except _READ_ERRORS:
        raise invalid(
            "the upload is neither a tar archive (plain, .gz, .bz2 or .xz) nor a zip; "
            f"{_REPACK_HINT}"
        ) from None


def _extract_tar(archive: Path, tree: _Tree) -> None:
    with _open_tar(archive) as tar:
        while (member := _reading(tar.next)) is not None:
            tree.budget.add_member()
            parts = _member_parts(member.name)
            if member.isdir():
                tree.add_dir(member.name, parts)
            elif member.isreg():
                tree.budget.expect(member.size)
                source = tar.extractfile(member)
                if source is None:
                    raise invalid(f"archive member {member.name!r} has no data; {_REPACK_HINT}")
                tree.add_file(member.name, parts, source)
            elif member.issym() or member.islnk():
                kind = "a symbolic link" if member.issym() else "a hard link"
                raise invalid(
                    f"archive member {member.name!r} is {kind}; archives may hold regular files "
                    f"and folders only: pack a copy made with `cp -rL`"
                )
            else:
                raise invalid(
                    f"archive member {member.name!r} is a device, pipe or other special file; "
                    "archives may hold regular files and folders only"
                )


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except _READ_ERRORS:
        raise invalid(f"the upload is not a readable zip archive; {_REPACK_HINT}") from None


def _extract_zip(archive: Path, tree: _Tree) -> None:
    with _open_zip(archive) as bundle:
        members = bundle.infolist()
        # The central directory lists everything up front: refuse on its word before writing.
        tree.budget.check_members(len(members))
        tree.budget.expect(sum(member.file_size for member in members))
        for member in members:
            tree.budget.add_member()
            parts = _member_parts(member.filename)
            if parts[:1] == (MACOS_METADATA,):
                continue
            kind = stat.S_IFMT(member.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise invalid(
                    f"archive member {member.filename!r} is a symbolic link; archives may hold "
                    "regular files and folders only: pack a copy made with `cp -rL`"
                )
            if member.is_dir() or kind == stat.S_IFDIR:
                tree.add_dir(member.filename, parts)
            elif kind not in (0, stat.S_IFREG):
                raise invalid(
                    f"archive member {member.filename!r} is a device, pipe or other special "
                    "file; archives may hold regular files and folders only"
                )
            elif member.flag_bits & 0x1:
                raise invalid(
                    f"archive member {member.filename!r} is encrypted; upload an unencrypted zip"
                )
            else:
                with _reading(functools.partial(bundle.open, member)) as source:
                    tree.add_file(member.filename, parts, source)


# What Linux file systems hold: a longer member would fail with ENAMETOOLONG while unpacking.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4000


def _member_parts(name: str) -> tuple[str, ...]:
    """The path components of a member name, refusing anything that could land outside dest."""
    if "\x00" in name:
        reason = "contains a NUL byte"
    elif "\\" in name or _DRIVE.match(name):
        reason = "is a Windows path (backslashes or a drive letter)"
    elif name.startswith("/"):
        reason = "is an absolute path"
    else:
        parts = tuple(part for part in name.split("/") if part not in ("", "."))
        too_long = len(name.encode()) > MAX_PATH_BYTES or any(
            len(part.encode()) > MAX_NAME_BYTES for part in parts
        )
        if ".." in parts:
            reason = "climbs out of the archive with '..'"
        elif too_long:
            reason = (
                f"is longer than a file system allows ({MAX_NAME_BYTES} bytes a name, "
                f"{MAX_PATH_BYTES} a path)"
            )
        else:
            return parts
    raise invalid(
        f"archive member {name!r} {reason}; archives may hold relative paths inside themselves "
        f"only: {_REPACK_HINT}"
    )


def _reading(read: Callable[[], T]) -> T:
    """Runs a read from the archive, turning a damaged stream into a clear refusal."""
    try:
        return read()
    except _READ_ERRORS as error:
        raise invalid(
            f"the archive is damaged or cut short ({error}); upload it again, or {_REPACK_HINT}"
        ) from None


def _looks_like_zip(archive: Path) -> bool:
    with archive.open("rb") as handle:
        return handle.read(4) in ZIP_MAGIC


def _upload_too_large(max_bytes: int) -> RegistryError:
    return RegistryError(
        ErrorCode.TOO_LARGE,
        f"the upload is larger than the limit of {_human(max_bytes)}; upload a smaller file, or "
        "ask the operator to raise EVALHUB_MAX_UPLOAD_BYTES",
    )


def _human(count: int) -> str:
    size, unit = float(count), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, larger
    return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
