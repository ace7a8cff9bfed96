from __future__ import annotations

import asyncio
import io
import os
import stat
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from evalhub.uploads import extract_archive, pack_directory, save_stream, save_upload
from registry.errors import ErrorCode, RegistryError

MiB = 1024 * 1024
LIMIT = 10 * MiB


class FakeUpload:
    """What save_upload reads: starlette's UploadFile has the same async read(n)."""

    def __init__(self, data: bytes, size: int | None = None) -> None:
        self.stream = io.BytesIO(data)
        self.size = size
        self.reads = 0

    async def read(self, size: int = -1) -> bytes:
        self.reads += 1
        return self.stream.read(size)


class Zeros(io.RawIOBase):
    """`size` zero bytes, made on the fly so a bomb never sits in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            add_bytes(tar, name, data)
    return path


def refused(archive: Path, dest: Path, code: ErrorCode, **limits: int) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        extract_archive(
            archive,
            dest,
            max_bytes=limits.get("max_bytes", LIMIT),
            max_members=limits.get("max_members", 100),
        )
    assert caught.value.code is code, caught.value.message
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}")] == []
    return caught.value


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "my-model"
    files = {
        "config.json": b'{"model_type": "llama"}',
        "model.safetensors": os.urandom(MiB + 3),
        "tokenizer/tokenizer.json": b"{}",
        "tokenizer/nested/deeper/.hidden": b"dot",
        "empty.txt": b"",
    }
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# -- saving uploads ----------------------------------------------------------------------------


def test_save_upload_writes_everything_within_the_limit(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 1)
    written = asyncio.run(save_upload(FakeUpload(data), tmp_path / "in" / "up.bin", LIMIT))
    assert written == len(data)
    assert (tmp_path / "in" / "up.bin").read_bytes() == data


def test_save_upload_stops_as_soon_as_the_limit_is_passed(tmp_path: Path) -> None:
    upload = FakeUpload(bytes(50 * MiB))
    with pytest.raises(RegistryError, match="EVALHUB_MAX_UPLOAD_BYTES") as caught:
        asyncio.run(save_upload(upload, tmp_path / "up.bin", LIMIT))
    assert caught.value.code is ErrorCode.TOO_LARGE
    assert not (tmp_path / "up.bin").exists()
    assert upload.reads <= LIMIT // MiB + 1


def test_save_upload_refuses_a_declared_size_before_reading(tmp_path: Path) -> None:
    upload = FakeUpload(b"x", size=LIMIT + 1)
    with pytest.raises(RegistryError) as caught:
        asyncio.run(save_upload(upload, tmp_path / "up.bin", LIMIT))
    assert caught.value.code is ErrorCode.TOO_LARGE
    assert upload.reads == 0 and not (tmp_path / "up.bin").exists()


def test_save_stream(tmp_path: Path) -> None:
    assert save_stream(io.BytesIO(b"abc"), tmp_path / "s.bin", 3) == 3
    assert (tmp_path / "s.bin").read_bytes() == b"abc"
    with pytest.raises(RegistryError) as caught:
        save_stream(io.BytesIO(b"abcd"), tmp_path / "t.bin", 3)
    assert caught.value.code is ErrorCode.TOO_LARGE
    assert not (tmp_path / "t.bin").exists()


# -- good archives -----------------------------------------------------------------------------


def test_pack_and_extract_round_trip_byte_for_byte(model_dir: Path, tmp_path: Path) -> None:
    archive = pack_directory(model_dir, tmp_path / "upload.tar")
    with tarfile.open(archive) as tar:
        assert all(m.isreg() for m in tar.getmembers())
        assert all(m.name.startswith("my-model/") for m in tar.getmembers())
    extracted = extract_archive(archive, tmp_path / "dest", max_bytes=LIMIT, max_members=100)
    assert extracted == tmp_path / "dest" / "my-model"
    assert files_of(extracted) == files_of(model_dir)


def test_format_is_detected_by_content_not_name(model_dir: Path, tmp_path: Path) -> None:
    archive = pack_directory(model_dir, tmp_path / "upload.zip")  # a tar in disguise
    extracted = extract_archive(archive, tmp_path / "dest", max_bytes=LIMIT, max_members=100)
    assert files_of(extracted) == files_of(model_dir)


@pytest.mark.parametrize("mode", ["w", "w:bz2", "w:xz"])
def test_other_tar_compressions(tmp_path: Path, mode: str) -> None:
    archive = make_tar(tmp_path / "a.bin", {"a.txt": b"a", "b/c.txt": b"c"}, mode)
    dest = tmp_path / "dest"
    # Two top-level entries: the destination itself is the folder.
    assert extract_archive(archive, dest, max_bytes=LIMIT, max_members=10) == dest
    assert files_of(dest) == {"a.txt": b"a", "b/c.txt": b"c"}


def test_zip_of_a_folder_made_on_a_mac(tmp_path: Path) -> None:
    archive = tmp_path / "upload.tar"  # a zip, whatever its name says
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("model/", b"")
        bundle.writestr("model/config.json", b"{}")
        bundle.writestr("model/sub/weights.bin", b"w" * 1000)
        bundle.writestr("__MACOSX/model/._config.json", b"resource fork")
    extracted = extract_archive(archive, tmp_path / "dest", max_bytes=LIMIT, max_members=10)
    assert extracted == tmp_path / "dest" / "model"
    assert files_of(tmp_path / "dest") == {
        "model/config.json": b"{}",
        "model/sub/weights.bin": b"w" * 1000,
    }


def test_dot_prefixed_names_from_tar_dash_c(tmp_path: Path) -> None:
    archive = tmp_path / "a.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("./")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        add_bytes(tar, "./model/config.json", b"{}")
    extracted = extract_archive(archive, tmp_path / "dest", max_bytes=LIMIT, max_members=10)
    assert extracted == tmp_path / "dest" / "model"


def test_empty_destination_directory_is_accepted(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tgz", {"x": b"1"})
    (tmp_path / "dest").mkdir()
    assert extract_archive(archive, tmp_path / "dest", max_bytes=LIMIT, max_members=10)
    with pytest.raises(FileExistsError):
        extract_archive(archive, tmp_path / "dest", max_bytes=LIMIT, max_members=10)


# -- refused archives --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil", "'..'"),
        ("model/../../evil", "'..'"),
        ("/abs/path", "absolute"),
        ("C:/windows/evil", "Windows"),
        ("model\\..\\evil", "Windows"),
    ],
)
def test_tar_member_paths_that_escape_are_refused(tmp_path: Path, name: str, reason: str) -> None:
    archive = make_tar(tmp_path / "a.tgz", {"model/ok.txt": b"ok", name: b"evil"})
    error = refused(archive, tmp_path / "dest", ErrorCode.INVALID_ARGUMENT)
    assert reason in error.message and repr(name) in error.message
    assert not (tmp_path / "evil").exists() and not Path("/abs/path").exists()


@pytest.mark.parametrize("link_type", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_are_refused(tmp_path: Path, link_type: bytes) -> None:
    archive = tmp_path / "a.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        add_bytes(tar, "model/config.json", b"{}")
        info = tarfile.TarInfo("model/passwd")
        info.type = link_type
        info.linkname = "/etc/passwd" if link_type == tarfile.SYMTYPE else "model/config.json"
        tar.addfile(info)
    error = refused(archive, tmp_path / "dest", ErrorCode.INVALID_ARGUMENT)
    assert "link" in error.message and "model/passwd" in error.message


@pytest.mark.parametrize("special", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_tar_devices_and_fifos_are_refused(tmp_path: Path, special: bytes) -> None:
    archive = tmp_path / "a.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("model/device")
        info.type = special
        tar.addfile(info)
    assert "special file" in refused(archive, tmp_path / "dest", ErrorCode.INVALID_ARGUMENT).message


def test_zip_with_backslash_escape_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("model/ok.txt", b"ok")
        bundle.writestr("..\\evil", b"evil")
    error = refused(archive, tmp_path / "dest", ErrorCode.INVALID_ARGUMENT)
    assert "Windows path" in error.message


@pytest.mark.parametrize("name", ["../evil", "/abs/evil"])
def test_zip_member_paths_that_escape_are_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(zipfile.ZipInfo(name), b"evil")
    refused(archive, tmp_path / "dest", ErrorCode.INVALID_ARGUMENT)
    assert not (tmp_path / "evil").exists()


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        info = zipfile.ZipInfo("model/link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(info, "/etc/passwd")
    assert (
        "symbolic link" in refused(archive, tmp_path / "dest", ErrorCode.INVALID_ARGUMENT).message
    )


def test_tar_gzip_bomb_is_refused_quickly(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("model/zeros.bin")
        info.size = 200 * MiB
        tar.addfile(info, Zeros(info.size))
    assert archive.stat().st_size < 2 * MiB
    started = time.perf_counter()
    error = refused(archive, tmp_path / "dest", ErrorCode.TOO_LARGE, max_bytes=LIMIT)
    assert time.perf_counter() - started < 2
    assert "10.0 MiB" in error.message


def test_many_small_members_past_the_byte_limit_are_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tgz", {f"model/{i}.bin": bytes(MiB) for i in range(12)})
    refused(archive, tmp_path / "dest", ErrorCode.TOO_LARGE, max_bytes=LIMIT)


def test_zip_bomb_is_refused_quickly(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with (
        zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as bundle,
        bundle.open("model/zeros.bin", "w", force_zip64=True) as out,
    ):
        for _ in range(200):
            out.write(bytes(MiB))
    started = time.perf_counter()
    refused(archive, tmp_path / "dest", ErrorCode.TOO_LARGE, max_bytes=LIMIT)
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_real_bytes_are_counted_when_headers_lie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """With the header checks switched off, counting what is written still refuses the bomb."""
    import evalhub.uploads as uploads

    monkeypatch.setattr(uploads._Budget, "expect", lambda self, declared: None)
    written: list[int] = []
    real_add = uploads._Budget.add

    def add(self: uploads._Budget, count: int) -> None:
        written.append(count)
        real_add(self, count)

    monkeypatch.setattr(uploads._Budget, "add", add)
    archive = tmp_path / "bomb"
    if kind == "tar":
        with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
            info = tarfile.TarInfo("model/zeros.bin")
            info.size = 50 * MiB
            tar.addfile(info, Zeros(info.size))
    else:
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as bundle:
            bundle.writestr("model/zeros.bin", bytes(50 * MiB))
    refused(archive, tmp_path / "dest", ErrorCode.TOO_LARGE, max_bytes=LIMIT)
    assert LIMIT < sum(written) <= LIMIT + MiB


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_too_many_members_are_refused(tmp_path: Path, kind: str) -> None:
    archive = tmp_path / "many"
    names = [f"model/{i}.txt" for i in range(21)]
    if kind == "tar":
        make_tar(archive, dict.fromkeys(names, b"x"))
    else:
        with zipfile.ZipFile(archive, "w") as bundle:
            for name in names:
                bundle.writestr(name, b"x")
    error = refused(archive, tmp_path / "dest", ErrorCode.TOO_LARGE, max_members=20)
    assert "EVALHUB_MAX_ARCHIVE_MEMBERS" in error.message


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"model/a": b"1", "model/a/b": b"2"}, "which is a file"),
        ({"model/a": b"1", "model//a": b"2"}, "appears twice"),
    ],
)
def test_conflicting_members_are_refused(
    tmp_path: Path, members: dict[str, bytes], message: str
) -> None:
    archive = make_tar(tmp_path / "a.tgz", members)
    assert message in refused(archive, tmp_path / "dest", ErrorCode.INVALID_ARGUMENT).message


def test_not_an_archive_and_damaged_archives_are_refused(model_dir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    assert "neither a tar" in refused(junk, tmp_path / "dest", ErrorCode.INVALID_ARGUMENT).message

    whole = pack_directory(model_dir, tmp_path / "whole.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: len(whole) // 2])
    assert "damaged" in refused(cut, tmp_path / "dest", ErrorCode.INVALID_ARGUMENT).message

    empty = make_tar(tmp_path / "empty.tgz", {})
    refused(empty, tmp_path / "dest", ErrorCode.INVALID_ARGUMENT)


# -- packing -----------------------------------------------------------------------------------


def test_pack_directory_refuses_links_and_empty_folders(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "link").symlink_to(model_dir / "config.json")
    with pytest.raises(RegistryError, match="symbolic link") as caught:
        pack_directory(model_dir, tmp_path / "out.tgz")
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert list(tmp_path.glob("*out.tgz*")) == []

    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="holds no files"):
        pack_directory(tmp_path / "empty", tmp_path / "out.tgz")
