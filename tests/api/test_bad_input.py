"""The probe's bad inputs, replayed against the real app on SQLite and PostgreSQL: each one that was
a plain-text 500 (or was accepted silently) is now a 4xx in the one JSON error shape, with a
message that says what to do, and changes nothing."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from evalhub.api.app import create_app
from evalhub.platform import Platform
from evalhub.settings import Settings
from tests.api.conftest import tar_of
from tests.scripted_server import ScriptedServer

API = "/api/v1"
BIG = 2**63  # one past the largest 64-bit integer
DEEP = "[" * 100_000 + "]" * 100_000
MEGABYTE = "x" * 1_000_000


def error_of(response: Any) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return response.status_code, body["error"]["message"]


def count(platform: Platform, table: str) -> int:
    with platform.engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


@pytest.fixture
def registered(client: TestClient, tokens: dict[str, dict[str, str]], model_dirs) -> TestClient:  # type: ignore[no-untyped-def]
    editor = tokens["editor"]
    assert client.post(
        f"{API}/models", headers=editor, json={"name": "fx", "kind": "base"}
    ).is_success
    upload = {"file": ("base.tgz", tar_of(model_dirs["base"]))}
    assert client.post(f"{API}/models/fx/versions", headers=editor, files=upload).is_success
    dataset = {"file": ("d.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n')}
    assert client.post(
        f"{API}/datasets/ds/versions", headers=editor, files=dataset, data={"create": "true"}
    ).is_success
    return client


def test_numbers_past_64_bits_are_422_not_500(registered: TestClient, tokens, platform) -> None:  # type: ignore[no-untyped-def]
    editor = tokens["editor"]
    moves = count(platform, "alias_history")
    for response in (
        registered.put(f"{API}/models/fx/aliases/staging", headers=editor, json={"version": BIG}),
        registered.get(f"{API}/models/fx/versions/{2**65}", headers=editor),
        registered.get(f"{API}/models/fx/versions/{2**65}/lineage", headers=editor),
        registered.get(f"{API}/datasets/ds/versions/{2**65}", headers=editor),
        registered.get(f"{API}/datasets/ds/versions/{2**65}/content", headers=editor),
    ):
        status, message = error_of(response)
        assert status == 422 and "less than or equal to 9223372036854775807" in message
    status, message = error_of(
        registered.get(f"{API}/resolve", params={"ref": f"fx/{10**30}"}, headers=editor)
    )
    assert status == 400 and "numbered from 1 to 9223372036854775807" in message
    assert count(platform, "alias_history") == moves


def test_lineage_that_does_not_parse_or_fit_is_422(  # type: ignore[no-untyped-def]
    registered: TestClient, tokens, platform, model_dirs
) -> None:
    editor = tokens["editor"]
    registered.post(f"{API}/models", headers=editor, json={"name": "ad", "kind": "adapter"})
    versions = count(platform, "model_versions")
    for lineage, expected in (
        ({"seed": "x"}, "seed"),
        ({"seed": BIG}, "seed"),
        ({"training_job": "j" * 300}, "at most 128 characters"),
        ({"dataset": "d" * 300}, "at most 128 characters"),
        ({"sede": 1}, "Extra inputs are not permitted"),
    ):
        response = registered.post(
            f"{API}/models/ad/versions",
            headers=editor,
            files={"file": ("a.tgz", tar_of(model_dirs["adapter"]))},
            data={"base": "fx/1", "lineage": json.dumps(lineage)},
        )
        status, message = error_of(response)
        assert status == 422 and expected in message, message
    assert count(platform, "model_versions") == versions


def test_json_nested_100000_deep_is_refused(registered: TestClient, tokens) -> None:  # type: ignore[no-untyped-def]
    editor = tokens["editor"]
    upload = {"file": ("deep.jsonl", DEEP.encode() + b"\n")}
    status, message = error_of(
        registered.post(f"{API}/datasets/ds/versions", headers=editor, files=upload)
    )
    assert status == 400 and "nested deeper than 64" in message
    chat = registered.post(
        "/v1/chat/completions",
        headers={**editor, "content-type": "application/json"},
        content=b'{"model": "fx/1", "messages": ' + DEEP.encode() + b"}",
    )
    assert chat.status_code == 400
    assert "nested deeper than 64" in chat.json()["error"]["message"]


def test_unknown_fields_and_oversize_texts_are_refused(  # type: ignore[no-untyped-def]
    registered: TestClient, tokens, platform
) -> None:
    editor = tokens["editor"]
    audit = count(platform, "audit_log")
    for method, path, body in (
        ("post", "/models", {"name": "m2", "kind": "base", "colour": "red"}),
        ("patch", "/models/fx", {"descripton": "typo"}),
        ("put", "/models/fx/aliases/staging", {"version": 1, "reson": "typo"}),
        ("post", "/models", {"name": "m3", "kind": "base", "description": MEGABYTE}),
        ("post", "/models", {"name": "m4", "kind": "base", "tags": {"k": MEGABYTE}}),
        ("put", "/models/fx/aliases/staging", {"version": 1, "reason": MEGABYTE}),
        ("post", "/deployments", {"name": "d", "backend": "b", "arms": [], "sticky_": 1}),
    ):
        status, message = error_of(
            registered.request(method, f"{API}{path}", headers=editor, json=body)
        )
        assert status == 422, (path, message)
        assert "Extra inputs are not permitted" in message or "at most" in message
    assert count(platform, "audit_log") == audit


def test_rollouts_refuse_empty_steps_and_a_step_past_the_last(  # type: ignore[no-untyped-def]
    registered: TestClient, tokens, start_scripted_server
) -> None:
    editor = tokens["editor"]
    upstream = start_scripted_server(ScriptedServer(lambda body: "hi", served_models=["fx/1"]))
    backend = {"name": "up", "base": "fx/1", "managed": False, "url": upstream.base_url}
    assert registered.post(f"{API}/backends", headers=editor, json=backend).is_success
    arms = [
        {"name": "control", "model": "fx/1", "weight": 100},
        {"name": "candidate", "model": "fx/1", "weight": 0},
    ]
    deployment = {"name": "bot", "backend": "up", "arms": arms}
    assert registered.post(f"{API}/deployments", headers=editor, json=deployment).is_success
    rollout = f"{API}/deployments/bot/rollout"
    empty = registered.post(rollout, headers=editor, json={"action": "start", "steps": []})
    assert error_of(empty)[0] == 422
    started = registered.post(rollout, headers=editor, json={"action": "start", "steps": [10, 50]})
    assert started.is_success, started.text
    assert registered.post(rollout, headers=editor, json={"action": "step"}).is_success
    status, message = error_of(registered.post(rollout, headers=editor, json={"action": "step"}))
    assert status == 409 and "is complete" in message
    port = {"name": "up2", "base": "fx/1", "options": {"port": "abc"}}
    assert error_of(registered.post(f"{API}/backends", headers=editor, json=port))[0] == 422


def test_fine_tuning_on_a_base_without_a_tokenizer_or_heads_says_what_is_missing(  # type: ignore[no-untyped-def]
    registered: TestClient, tokens, model_dirs, tmp_path: Path
) -> None:
    editor = tokens["editor"]
    # model_dirs["base"] (fx/1) has weights and a config but no tokenizer.
    estimate = registered.post(f"{API}/finetune/estimate", headers=editor, json={"model": "fx/1"})
    assert estimate.is_success, estimate.text
    chat = (
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    )
    validated = registered.post(
        f"{API}/finetune/validate",
        headers=editor,
        files={"file": ("t.jsonl", chat)},
        data={"model": "fx/1"},
    )
    status, message = error_of(validated)
    assert status == 400 and "no usable tokenizer" in message
    headless = tmp_path / "headless"
    shutil.copytree(model_dirs["base"], headless)
    config = json.loads((headless / "config.json").read_text())
    del config["num_attention_heads"]
    (headless / "config.json").write_text(json.dumps(config))
    registered.post(f"{API}/models", headers=editor, json={"name": "hl", "kind": "base"})
    upload = {"file": ("h.tgz", tar_of(headless))}
    assert registered.post(f"{API}/models/hl/versions", headers=editor, files=upload).is_success
    status, message = error_of(
        registered.post(f"{API}/finetune/estimate", headers=editor, json={"model": "hl/1"})
    )
    assert status == 400 and "num_attention_heads" in message


def test_archive_members_with_over_long_names_are_refused(
    client: TestClient, tokens, platform
) -> None:  # type: ignore[no-untyped-def]
    editor = tokens["editor"]
    client.post(f"{API}/models", headers=editor, json={"name": "fx", "kind": "base"})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("model/" + "n" * 300)
        info.size = 2
        archive.addfile(info, io.BytesIO(b"{}"))
    response = client.post(
        f"{API}/models/fx/versions", headers=editor, files={"file": ("m.tgz", buffer.getvalue())}
    )
    status, message = error_of(response)
    assert status == 400 and "longer than a file system allows" in message
    assert count(platform, "model_versions") == 0


@pytest.fixture
def small_limit(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(
        home=tmp_path / "home", database_url=database_url, max_upload_bytes=10_000, _env_file=None
    )
    platform = Platform.open(settings)
    from evalhub.auth.tokens import create_token

    _, secret = create_token(platform.engine, "editor", "editor", actor="test")
    with TestClient(create_app(platform=platform)) as client:
        yield client, {"Authorization": f"Bearer {secret}"}
    platform.close()


def test_an_oversize_chunked_upload_is_413(small_limit: tuple[TestClient, dict[str, str]]) -> None:
    client, editor = small_limit
    client.post(f"{API}/datasets", headers=editor, json={"name": "ds"})
    boundary = "b0undary"
    line = b'{"messages": [{"role": "user", "content": "hi"}]}\n'

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        for _ in range(1_000):
            yield line
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        f"{API}/datasets/ds/versions",
        headers={**editor, "content-type": f"multipart/form-data; boundary={boundary}"},
        content=chunks(),
    )
    status, message = error_of(response)
    assert status == 413 and "EVALHUB_MAX_UPLOAD_BYTES" in message
