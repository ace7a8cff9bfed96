"""Turning an uploaded archive, or an allowed server-side path, into a directory to register."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import UploadFile

from evalhub.platform import Platform
from evalhub.uploads import extract_archive, save_stream
from registry.errors import ErrorCode, RegistryError, invalid


@contextmanager
def scratch(platform: Platform) -> Iterator[Path]:
    """A private temporary directory under EVALHUB_HOME, removed afterwards whatever happens."""
    root = platform.settings.home / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="upload-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def uploaded_directory(
    platform: Platform, file: UploadFile | None, path: str | None
) -> Iterator[Path]:
    settings = platform.settings
    if (file is None) == (path is None):
        raise invalid("send exactly one of 'file' (a tar or zip of the directory) and 'path'")
    if path is not None:
        if not settings.allow_server_paths:
            raise RegistryError(
                ErrorCode.PERMISSION_DENIED,
                "this server does not register server-side paths (EVALHUB_ALLOW_SERVER_PATHS is "
                "off); upload a tar or zip of the directory instead",
            )
        directory = Path(path)
        if not directory.is_absolute() or not directory.is_dir():
            raise invalid(f"{path!r} is not an absolute path to a directory on the server")
        yield directory
        return
    assert file is not None
    with scratch(platform) as work:
        archive = work / "upload"
        save_stream(file.file, archive, settings.max_upload_bytes)
        yield extract_archive(
            archive,
            work / "tree",
            max_bytes=settings.max_upload_bytes,
            max_members=settings.max_archive_members,
        )


@contextmanager
def uploaded_file(platform: Platform, file: UploadFile) -> Iterator[Path]:
    with scratch(platform) as work:
        target = work / "upload"
        save_stream(file.file, target, platform.settings.max_upload_bytes)
        yield target
