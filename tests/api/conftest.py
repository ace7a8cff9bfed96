"""An app per test (TestClient over a real database) and one token per role."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from evalhub.api.app import create_app
from evalhub.auth.tokens import create_token


@pytest.fixture
def client(platform) -> TestClient:  # type: ignore[no-untyped-def]
    with TestClient(create_app(platform=platform)) as test_client:
        yield test_client


@pytest.fixture
def tokens(platform) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    """Authorization headers for a viewer, an editor and an admin."""
    headers = {}
    for role in ("viewer", "editor", "admin"):
        _, secret = create_token(platform.engine, f"{role}-token", role, actor="test")
        headers[role] = {"Authorization": f"Bearer {secret}"}
    return headers


def tar_of(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(directory, arcname=directory.name)
    return buffer.getvalue()
