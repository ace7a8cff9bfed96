"""Two `evalhub serve` processes on one database (a SQLite file, and PostgreSQL), one local backend
process: a change made through one server is followed by the other, which hears it as a change
event (NOTIFY on PostgreSQL, the audit log's new rows on SQLite) and preloads the new adapter
itself before any request reaches it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from evalhub.child_server import child_server, free_port
from evalhub.cli.registry import register_directory
from evalhub.client import Client
from evalhub.serving.supervisor import wait_healthy
from tests.conftest import DATABASES, postgres_schema
from tests.serving.conftest import Models

MESSAGES = [{"role": "user", "content": "repeat: cat dog"}]


@pytest.fixture(params=DATABASES)
def database_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {}  # both servers use the home's SQLite file
        return
    for url in postgres_schema():
        yield {"EVALHUB_DATABASE_URL": url}


@pytest.fixture
def backend_url(models: Models) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "evalhub.serving.local.server", "--model", str(models.base),
            "--served-model-name", "tiny/1", "--port", str(port), "--log-level", "warning",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}/v1", 60, None)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def loaded_on(http: httpx.Client) -> list[str]:
    response = http.get("/api/v1/backends/cpu")
    response.raise_for_status()
    return list(response.json()["options"]["loaded_adapters"])


def served_version(http: httpx.Client, model: str) -> str:
    response = http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, "max_tokens": 2, "temperature": 0},
    )
    assert response.status_code == 200, response.text
    return response.headers["x-evalhub-model-version"]


def wait_until(check: object, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_a_change_through_one_server_is_followed_and_preloaded_by_the_other(
    models: Models, backend_url: str, database_env: dict[str, str], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with child_server(home, database_env) as first:
        headers = {"Authorization": f"Bearer {first.token}"}
        with httpx.Client(base_url=first.url, headers=headers, timeout=120) as one:
            api = Client(one)
            api.post("/models", {"name": "tiny", "kind": "base"})
            register_directory(api, models.base, "tiny")
            api.post("/models", {"name": "bot", "kind": "adapter"})
            register_directory(api, models.alpha, "bot", base="tiny/1")
            register_directory(api, models.beta, "bot", base="tiny/1")
            api.put("/models/bot/aliases/live", {"version": 1})
            backend = {"name": "cpu", "base": "tiny/1", "managed": False, "url": backend_url}
            api.post("/backends", backend)
            api.post(
                "/deployments",
                {"name": "swap", "backend": "cpu",
                 "arms": [{"name": "main", "model": "bot@live", "weight": 100}]},
            )  # fmt: skip
            api.post(
                "/deployments",
                {"name": "ab", "backend": "cpu", "sticky": "none",
                 "arms": [{"name": "control", "model": "bot/1", "weight": 100},
                          {"name": "candidate", "model": "bot/2", "weight": 0}]},
            )  # fmt: skip

            with (
                child_server(home, database_env) as second,
                httpx.Client(base_url=second.url, headers=headers, timeout=120) as two,
            ):
                assert served_version(two, "swap") == "bot/1"
                assert served_version(two, "ab") == "bot/1"
                assert not any(name.startswith("bot-v2-") for name in loaded_on(two))

                # An alias move through the first server: the second loads bot/2 by itself,
                # before any request for it, and its very next request is answered by bot/2.
                api.put("/models/bot/aliases/live", {"version": 2})
                wait_until(lambda: any(n.startswith("bot-v2-") for n in loaded_on(two)))
                assert served_version(two, "swap") == "bot/2"

                # A weight change through the first server: the second's next requests follow.
                api.patch(
                    "/deployments/ab",
                    {"arms": [{"name": "control", "model": "bot/1", "weight": 0},
                              {"name": "candidate", "model": "bot/2", "weight": 100}]},
                )  # fmt: skip
                time.sleep(
                    1.0
                )  # SQLite: read every 0.25 s (a busy machine adds); PostgreSQL: at once
                assert [served_version(two, "ab") for _ in range(5)] == ["bot/2"] * 5


@pytest.mark.parametrize("database_env", ["postgres"], indirect=True)
def test_a_second_server_leaves_the_first_servers_managed_backend_running(
    models: Models, database_env: dict[str, str], tmp_path: Path
) -> None:
    # Two homes, one PostgreSQL: as two `evalhub serve` units under a process manager would run.
    with child_server(tmp_path / "one", database_env) as first:
        headers = {"Authorization": f"Bearer {first.token}"}
        with httpx.Client(base_url=first.url, headers=headers, timeout=120) as one:
            api = Client(one)
            api.post("/models", {"name": "tiny", "kind": "base"})
            register_directory(api, models.base, "tiny")
            started = api.post("/backends", {"name": "cpu", "kind": "local", "base": "tiny/1"})
            with (
                child_server(tmp_path / "two", database_env) as second,
                httpx.Client(base_url=second.url, headers=headers, timeout=120) as two,
            ):
                seen = two.get("/api/v1/backends/cpu").json()
                assert seen["urls"] == started["urls"] and seen["status"] == "healthy"
                assert served_version(two, "tiny/1") == "tiny/1"
            # The second server stopped; the first's backend still answers through the first.
            assert served_version(one, "tiny/1") == "tiny/1"
