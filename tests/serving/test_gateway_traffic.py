"""The traffic log through a real `evalhub serve`, on SQLite and PostgreSQL: a client's over-long
ids are refused without stopping the log, and a killed server loses no answered request.

The backend is a scripted OpenAI-compatible server (a real HTTP server on 127.0.0.1, answering
at once) attached by URL, so hundreds of requests take a second or two.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from evalhub.child_server import ChildServer, child_server
from evalhub.cli.registry import register_directory
from evalhub.client import Client
from registry.db import create_engine
from tests.scripted_server import ScriptedServer

MESSAGES = [{"role": "user", "content": "hello"}]


@contextmanager
def server_with_backend(
    home: Path, database_url: str, upstream: ScriptedServer, base_dir: Path, *, first: bool
) -> Iterator[tuple[ChildServer, httpx.Client]]:
    with child_server(home, {"EVALHUB_DATABASE_URL": database_url}) as server:
        token = server.token or (home / "token").read_text()
        (home / "token").write_text(token)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
            if first:
                api = Client(http)
                api.post("/models", {"name": "tiny", "kind": "base"})
                register_directory(api, base_dir, "tiny")
                api.post(
                    "/backends",
                    {"name": "up", "base": "tiny/1", "managed": False, "url": upstream.base_url},
                )
            yield server, http


def chat(http: httpx.Client, **fields: Any) -> httpx.Response:
    return http.post(
        "/v1/chat/completions", json={"model": "tiny/1", "messages": MESSAGES, **fields}
    )


def stored(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(text("SELECT id FROM traffic")).scalars())
    finally:
        engine.dispose()


def wait_stored(database_url: str, expected: set[str], timeout: float = 30) -> set[str]:
    deadline = time.monotonic() + timeout
    while (found := stored(database_url)) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


@pytest.fixture
def upstream(start_scripted_server) -> ScriptedServer:  # type: ignore[no-untyped-def]
    return start_scripted_server(ScriptedServer(lambda body: "hi", served_models=["tiny/1"]))


def test_an_over_long_user_is_refused_and_the_next_requests_are_recorded(
    tmp_path: Path, database_url: str, upstream: ScriptedServer, model_dirs: dict[str, Path]
) -> None:
    home = tmp_path / "home"
    with server_with_backend(home, database_url, upstream, model_dirs["base"], first=True) as (
        _,
        http,
    ):
        for fields, headers, param in (
            ({"user": "u" * 300}, {}, "user"),
            ({}, {"X-Evalhub-User": "u" * 300}, "user"),
            ({"model": "m" * 300}, {}, "model"),
        ):
            body = {"model": "tiny/1", "messages": MESSAGES, **fields}
            refused = http.post("/v1/chat/completions", json=body, headers=headers)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["param"] == param and "the most is 256" in error["message"]
        # Longer than its column (200) but within OpenAI's limit: answered, stored clipped.
        kept = chat(http, user="k" * 250)
        assert kept.status_code == 200, kept.text
        ids = {kept.headers["x-evalhub-request-id"]}
        for _ in range(10):
            answered = chat(http)
            assert answered.status_code == 200
            ids.add(answered.headers["x-evalhub-request-id"])
        assert wait_stored(database_url, ids) >= ids
        page = http.get("/api/v1/traffic", params={"limit": 20}).json()["data"]
        clipped = next(r for r in page if r["id"] == kept.headers["x-evalhub-request-id"])
        assert len(clipped["user"]) == 200 and clipped["request"]["user"] == "k" * 250


def test_kill_9_after_n_answered_requests_leaves_n_records(
    tmp_path: Path, database_url: str, upstream: ScriptedServer, model_dirs: dict[str, Path]
) -> None:
    home = tmp_path / "home"
    answered: set[str] = set()
    with server_with_backend(home, database_url, upstream, model_dirs["base"], first=True) as (
        server,
        http,
    ):
        stream = http.post(
            "/v1/chat/completions",
            json={"model": "tiny/1", "messages": MESSAGES, "stream": True},
        )
        assert stream.status_code == 200 and stream.text.rstrip().endswith("[DONE]")
        answered.add(stream.headers["x-evalhub-request-id"])
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: chat(http), range(400)))
        assert all(reply.status_code == 200 for reply in replies)
        answered |= {reply.headers["x-evalhub-request-id"] for reply in replies}
        server.process.kill()  # SIGKILL, right after the last answer
        server.process.wait()
    before_restart = stored(database_url)
    assert before_restart <= answered
    with server_with_backend(home, database_url, upstream, model_dirs["base"], first=False):
        after = wait_stored(database_url, answered)
    assert after == answered, f"{len(answered - after)} answered requests were lost"
    print(f"{len(answered) - len(before_restart)} of {len(answered)} came from the journal")
