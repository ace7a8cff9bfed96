"""The change events over HTTP: the paged history and the server-sent event stream, on a real
uvicorn server over SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from evalhub.api.app import create_app
from evalhub.auth.tokens import create_token
from evalhub.platform import Platform
from tests.serving.conftest import free_socket

API = "/api/v1"


@pytest.fixture
def server(platform: Platform) -> Iterator[str]:
    sock = free_socket()
    uv = uvicorn.Server(uvicorn.Config(create_app(platform=platform), log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(timeout=20)
    sock.close()


@pytest.fixture
def headers(platform: Platform) -> dict[str, dict[str, str]]:
    out = {}
    for role in ("viewer", "editor", "admin"):
        _, secret = create_token(platform.engine, f"{role}-token", role, actor="test")
        out[role] = {"Authorization": f"Bearer {secret}"}
    return out


def next_event(lines: Iterator[str]) -> dict[str, Any]:
    """The next server-sent event (id, event, data lines up to a blank line) or comment line;
    the client's read timeout ends a wait for one that never comes."""
    event: dict[str, Any] = {}
    for line in lines:
        if line.startswith(":"):
            return {"comment": line}
        if not line and event:
            return event
        if line:
            field, _, value = line.partition(": ")
            event[field] = json.loads(value) if field == "data" else value
    raise AssertionError("the stream ended")


def test_the_history_is_paged_filtered_and_hides_tokens_from_non_admins(
    server: str, headers: dict[str, dict[str, str]]
) -> None:
    with httpx.Client(base_url=server + API, headers=headers["editor"]) as api:
        api.post("/models", json={"name": "bot", "kind": "adapter"}).raise_for_status()
        api.post("/models", json={"name": "other", "kind": "adapter"}).raise_for_status()
        api.patch("/models/bot", json={"description": "answers"}).raise_for_status()
        page = api.get("/events/history", params={"resource": "models/bot", "limit": 1}).json()
        assert [(e["action"], e["resource"]) for e in page["data"]] == [
            ("model.update", "models/bot")
        ]
        rest = api.get(
            "/events/history",
            params={"resource": "models/bot", "page_token": page["next_page_token"]},
        ).json()
        assert [e["action"] for e in rest["data"]] == ["model.create"]
        first = rest["data"][0]["id"]
        after = api.get("/events/history", params={"resource": "models", "after": first}).json()
        assert [e["resource"] for e in after["data"]] == ["models/bot", "models/other"]
        both = api.get("/events/history", params={"resource": ["models/other", "tokens"]}).json()
        assert [e["resource"] for e in both["data"]] == ["models/other"]  # no tokens for editors
    admin = httpx.get(
        server + API + "/events/history", params={"resource": "tokens"}, headers=headers["admin"]
    ).json()
    assert {e["resource"] for e in admin["data"]} == {
        "tokens/viewer-token",
        "tokens/editor-token",
        "tokens/admin-token",
    }
    assert httpx.get(server + API + "/events/history").status_code == 401


def test_the_stream_relays_committed_changes_and_replays_from_last_event_id(
    server: str, headers: dict[str, dict[str, str]]
) -> None:
    editor = httpx.Client(base_url=server + API, headers=headers["editor"])
    editor.post("/models", json={"name": "bot", "kind": "adapter"}).raise_for_status()
    params = {"resource": "models/bot"}
    with (
        httpx.Client(base_url=server + API, headers=headers["viewer"], timeout=10) as viewer,
        viewer.stream("GET", "/events", params=params) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = stream.iter_lines()
        assert next_event(events) == {"comment": ": connected"}
        editor.post("/models", json={"name": "other", "kind": "adapter"}).raise_for_status()
        editor.patch("/models/bot", json={"description": "v2"}).raise_for_status()
        event = next_event(events)  # models/other was filtered out
        assert event["event"] == "model.update" and event["data"]["resource"] == "models/bot"
        assert event["data"]["after"]["description"] == "v2"
        assert event["data"]["actor"] == "editor-token"
        seen = int(event["id"])

    # Reconnecting with the last id seen gets what committed in between, then goes live.
    editor.patch("/models/bot", json={"description": "v3"}).raise_for_status()
    with (
        httpx.Client(base_url=server + API, headers=headers["viewer"], timeout=10) as viewer,
        viewer.stream(
            "GET", "/events", params=params, headers={"Last-Event-ID": str(seen)}
        ) as stream,
    ):
        missed = stream.iter_lines()
        replayed = next_event(missed)
        assert replayed["data"]["after"]["description"] == "v3" and int(replayed["id"]) > seen
        assert next_event(missed) == {"comment": ": connected"}
    editor.close()


def test_the_stream_refuses_bad_input_and_missing_tokens(
    server: str, headers: dict[str, dict[str, str]]
) -> None:
    assert httpx.get(server + API + "/events").status_code == 401
    bad = httpx.get(server + API + "/events", params={"after": -1}, headers=headers["viewer"])
    assert bad.status_code == 422 and "after" in bad.text
