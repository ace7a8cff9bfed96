"""The REST API through TestClient on real databases: flows, every error status, role boundaries."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from evalhub.api.app import create_app
from evalhub.platform import Platform
from tests.api.conftest import tar_of

API = "/api/v1"


def upload_version(client, headers, model, directory, **form):  # type: ignore[no-untyped-def]
    files = {"file": ("model.tar.gz", tar_of(directory), "application/gzip")}
    return client.post(f"{API}/models/{model}/versions", headers=headers, files=files, data=form)


def stored_files(platform: Platform) -> set[str]:
    root = Path(platform.registry.artifacts.root)
    return {str(p.relative_to(root)) for sub in ("blobs", "trees") for p in (root / sub).rglob("*")}


def error_of(response) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return response.status_code, body["error"]["code"]


def test_register_move_production_and_roll_back(client, tokens, model_dirs) -> None:
    admin, editor = tokens["admin"], tokens["editor"]
    assert (
        client.post(
            f"{API}/models", headers=editor, json={"name": "tiny", "kind": "base"}
        ).status_code
        == 201
    )
    base = upload_version(client, editor, "tiny", model_dirs["base"])
    assert base.status_code == 201, base.text
    assert base.json()["ref"] == "tiny/1" and base.json()["architecture"] == "LlamaForCausalLM"

    client.post(f"{API}/models", headers=editor, json={"name": "bot", "kind": "adapter"})
    for adapter in ("adapter", "adapter2"):
        response = upload_version(
            client, editor, "bot", model_dirs[adapter], base="tiny/1",
            lineage=json.dumps({"seed": 3, "hyperparameters": {"rank": 4}}),
        )  # fmt: skip
        assert response.status_code == 201, response.text
    assert response.json()["base"] == "tiny/1" and response.json()["seed"] == 3

    for version in (1, 2):
        moved = client.put(
            f"{API}/models/bot/aliases/production", headers=admin, json={"version": version}
        )
        assert moved.status_code == 200, moved.text
    assert (
        client.get(f"{API}/resolve", params={"ref": "bot@production"}, headers=admin).json()[
            "version"
        ]
        == 2
    )

    rolled = client.post(
        f"{API}/models/bot/aliases/production/rollback", headers=admin, json={"reason": "bad"}
    )
    assert rolled.status_code == 200 and rolled.json()["to_version"] == 1
    assert (
        client.get(f"{API}/models/bot/aliases/production", headers=tokens["viewer"]).json()[
            "version"
        ]
        == 1
    )
    history = client.get(
        f"{API}/models/bot/aliases/production/history", headers=tokens["viewer"]
    ).json()
    assert [(h["from_version"], h["to_version"], h["action"]) for h in history["data"]] == [
        (None, 1, "set"), (1, 2, "set"), (2, 1, "rollback"),
    ]  # fmt: skip
    assert history["data"][-1]["reason"] == "bad" and history["data"][-1]["actor"] == "admin-token"

    lineage = client.get(f"{API}/models/tiny/versions/1/lineage", headers=admin).json()
    assert lineage["derived"] == ["bot/1", "bot/2"]
    model = client.get(f"{API}/models/bot", headers=admin).json()
    assert model["aliases"] == {"production": 1} and model["latest_version"] == 2

    audit = client.get(
        f"{API}/audit", headers=admin, params={"resource": "models/bot/aliases"}
    ).json()
    actions = [entry["action"] for entry in audit["data"]]
    assert actions == ["alias.rollback", "alias.set", "alias.set"]  # newest first
    assert audit["data"][0]["before"] == {"version": 2}
    assert audit["data"][0]["after"]["version"] == 1


ROLE_CASES = [
    # (role, method, path, body, allowed)
    ("viewer", "get", "/models", None, True),
    ("viewer", "post", "/models", {"name": "x", "kind": "base"}, False),
    ("editor", "post", "/models", {"name": "x", "kind": "base"}, True),
    ("editor", "put", "/models/tiny/aliases/candidate", {"version": 1}, True),
    ("viewer", "put", "/models/tiny/aliases/candidate", {"version": 1}, False),
    ("editor", "put", "/models/tiny/aliases/production", {"version": 1}, False),
    ("admin", "put", "/models/tiny/aliases/production", {"version": 1}, True),
    ("editor", "delete", "/models/tiny/aliases/production", None, False),
    ("editor", "post", "/models/tiny/aliases/production/rollback", {}, False),
    ("editor", "post", "/tokens", {"name": "ci", "role": "viewer"}, False),
    ("admin", "post", "/tokens", {"name": "ci", "role": "viewer"}, True),
    ("editor", "get", "/tokens", None, False),
    ("editor", "get", "/audit", None, False),
    ("editor", "delete", "/models/tiny", None, False),
]


@pytest.mark.parametrize(("role", "method", "path", "body", "allowed"), ROLE_CASES)
def test_role_boundaries(
    client, tokens, platform, model_dirs, role, method, path, body, allowed
) -> None:
    platform.registry.create_model("tiny", "base")
    platform.registry.register_version("tiny", model_dirs["base"])
    platform.registry.set_alias("tiny", "production", 1)
    audit_before = len(
        client.get(f"{API}/audit", headers=tokens["admin"], params={"limit": 1000}).json()["data"]
    )
    kwargs = {"json": body} if body is not None else {}
    response = client.request(method.upper(), API + path, headers=tokens[role], **kwargs)
    if allowed:
        assert response.status_code < 300, response.text
        return
    assert error_of(response) == (403, "PERMISSION_DENIED")
    assert (
        role in response.json()["error"]["message"]
        or "needs" in response.json()["error"]["message"]
    )
    # Refused: nothing changed.
    audit_after = client.get(
        f"{API}/audit", headers=tokens["admin"], params={"limit": 1000}
    ).json()["data"]
    assert len(audit_after) == audit_before
    assert platform.registry.get_alias("tiny", "production").version == 1
    assert [m.name for m in platform.registry.search_models().data] == ["tiny"]


def test_authentication_errors(client, tokens, platform) -> None:
    assert error_of(client.get(f"{API}/models")) == (401, "UNAUTHENTICATED")
    assert client.get(f"{API}/models").headers["www-authenticate"] == "Bearer"
    bad = {"Authorization": "Bearer ehk_not-a-real-token-at-all"}
    assert error_of(client.get(f"{API}/models", headers=bad)) == (401, "UNAUTHENTICATED")
    revoked = client.delete(f"{API}/tokens/viewer-token", headers=tokens["admin"])
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert error_of(client.get(f"{API}/models", headers=tokens["viewer"])) == (
        401,
        "UNAUTHENTICATED",
    )
    created = client.post(
        f"{API}/tokens", headers=tokens["admin"], json={"name": "ci", "role": "editor"}
    )
    secret = created.json()["token"]
    assert created.status_code == 201 and secret.startswith("ehk_")
    listed = client.get(f"{API}/tokens", headers=tokens["admin"]).json()
    assert "ci" in [t["name"] for t in listed] and secret not in json.dumps(listed)
    ci = {"Authorization": f"Bearer {secret}"}
    assert (
        client.post(f"{API}/models", headers=ci, json={"name": "ok", "kind": "base"}).status_code
        == 201
    )


def test_error_statuses_and_shapes(client, tokens, platform, model_dirs) -> None:
    editor = tokens["editor"]
    assert error_of(client.get(f"{API}/models/ghost", headers=editor)) == (404, "NOT_FOUND")
    assert error_of(client.get(f"{API}/resolve", params={"ref": "bad ref"}, headers=editor)) == (
        400,
        "INVALID_ARGUMENT",
    )
    assert error_of(
        client.post(f"{API}/models", headers=editor, json={"name": "Bad!", "kind": "base"})
    ) == (400, "INVALID_ARGUMENT")
    assert error_of(client.post(f"{API}/models", headers=editor, json={"kind": "base"})) == (
        422,
        "INVALID_ARGUMENT",
    )
    assert error_of(
        client.post(f"{API}/models", headers=editor, json={"name": "x", "kind": "nope"})
    ) == (422, "INVALID_ARGUMENT")
    client.post(f"{API}/models", headers=editor, json={"name": "tiny", "kind": "base"})
    assert error_of(
        client.post(f"{API}/models", headers=editor, json={"name": "tiny", "kind": "base"})
    ) == (409, "ALREADY_EXISTS")
    assert error_of(client.get(f"{API}/models", headers=editor, params={"limit": 0})) == (
        422,
        "INVALID_ARGUMENT",
    )
    assert error_of(client.get(f"{API}/models", headers=editor, params={"page_token": "zz"})) == (
        400,
        "INVALID_ARGUMENT",
    )
    assert error_of(client.get(f"{API}/nowhere", headers=editor)) == (404, "NOT_FOUND")
    assert error_of(
        client.put(f"{API}/models/tiny/aliases/candidate", headers=editor, json={"version": 4})
    ) == (404, "NOT_FOUND")
    # An adapter uploaded without its base, and onto the wrong model kind: 400, nothing stored.
    client.post(f"{API}/models", headers=editor, json={"name": "bot", "kind": "adapter"})
    before = stored_files(platform)
    response = upload_version(client, editor, "bot", model_dirs["adapter"])
    assert (
        error_of(response) == (400, "INVALID_ARGUMENT")
        and "tiny/1" in response.json()["error"]["message"]
    )
    assert error_of(upload_version(client, editor, "tiny", model_dirs["adapter"])) == (
        400,
        "INVALID_ARGUMENT",
    )
    assert error_of(upload_version(client, editor, "ghost", model_dirs["base"])) == (
        404,
        "NOT_FOUND",
    )
    assert stored_files(platform) == before
    assert platform.registry.search_versions("bot").data == []


def _archive(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize(
    "members",
    [
        [_member("../evil.txt")],
        [_member("/etc/evil.txt")],
        [
            _member("model/config.json"),
            _member("model/link", kind=tarfile.SYMTYPE, link="/etc/passwd"),
        ],
        [
            _member("model/config.json"),
            _member("model/hard", kind=tarfile.LNKTYPE, link="model/config.json"),
        ],
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink"],
)
def test_archive_attacks_are_refused_and_leave_nothing(client, tokens, platform, members) -> None:
    platform.registry.create_model("tiny", "base")
    before = stored_files(platform)
    files = {"file": ("evil.tar.gz", _archive(members), "application/gzip")}
    response = client.post(f"{API}/models/tiny/versions", headers=tokens["editor"], files=files)
    assert error_of(response) == (400, "INVALID_ARGUMENT")
    assert stored_files(platform) == before and platform.registry.search_versions("tiny").data == []
    assert not list((platform.settings.home / "tmp").glob("*"))


def test_uploads_past_the_limit_get_413(settings, model_dirs) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 64 * 1024})
    platform = Platform.open(small)
    from evalhub.auth.tokens import create_token

    _, secret = create_token(platform.engine, "e", "editor", actor="t")
    headers = {"Authorization": f"Bearer {secret}"}
    with TestClient(create_app(platform=platform)) as client:
        platform.registry.create_model("tiny", "base")
        response = upload_version(client, headers, "tiny", model_dirs["base"])
        assert error_of(response) == (413, "TOO_LARGE")
        # A bomb: tiny compressed, far over the limit unpacked.
        zeros = _archive([_member("model/zeros.bin", b"\0" * (4 * 1024 * 1024))])
        assert len(zeros) < 64 * 1024
        files = {"file": ("bomb.tar.gz", zeros, "application/gzip")}
        bomb = client.post(f"{API}/models/tiny/versions", headers=headers, files=files)
        assert error_of(bomb) == (413, "TOO_LARGE")
    assert platform.registry.search_versions("tiny").data == []
    assert stored_files(platform) == set()
    platform.close()


def test_server_paths_only_when_allowed(settings, model_dirs) -> None:
    for allowed in (False, True):
        platform = Platform.open(settings.model_copy(update={"allow_server_paths": allowed}))
        from evalhub.auth.tokens import create_token

        _, secret = create_token(platform.engine, f"e{int(allowed)}", "editor", actor="t")
        headers = {"Authorization": f"Bearer {secret}"}
        with TestClient(create_app(platform=platform)) as client:
            if not allowed:
                platform.registry.create_model("tiny", "base")
            response = client.post(
                f"{API}/models/tiny/versions",
                headers=headers,
                data={"path": str(model_dirs["base"])},
            )
            if allowed:
                assert response.status_code == 201 and response.json()["source"] == str(
                    model_dirs["base"]
                )
            else:
                assert error_of(response) == (403, "PERMISSION_DENIED")
        platform.close()


def test_datasets_upload_and_dedupe(client, tokens, tmp_path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": str(i)}]}) + "\n"
            for i in range(10)
        )
    )
    editor = tokens["editor"]

    def upload(data: dict):  # type: ignore[no-untyped-def]
        files = {"file": ("train.jsonl", path.read_bytes(), "application/jsonl")}
        return client.post(f"{API}/datasets/chats/versions", headers=editor, files=files, data=data)

    assert error_of(upload({})) == (404, "NOT_FOUND")
    first = upload({"create": "true", "split": "train"})
    assert first.status_code == 201 and first.json()["version"]["row_count"] == 10
    again = upload({"create": "true"})
    assert again.status_code == 200 and again.json() == {**first.json(), "created": False}
    content = client.get(f"{API}/datasets/chats/versions/1/content", headers=tokens["viewer"])
    assert content.content == path.read_bytes()
    path.write_text("not json\n")
    bad = upload({})
    assert (
        error_of(bad) == (400, "INVALID_ARGUMENT")
        and "train.jsonl:1" in bad.json()["error"]["message"]
    )
    assert client.get(f"{API}/datasets/chats", headers=editor).json()["latest_version"] == 1


def test_probes_metrics_and_openapi(client, tokens) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["database"] == "ok"
    client.get(f"{API}/models", headers=tokens["viewer"])
    metrics = client.get("/metrics").text
    assert (
        'evalhub_http_requests_total{method="GET",route="/api/v1/models",status="200"} 1.0'
        in metrics
    )
    assert "evalhub_http_request_duration_seconds_bucket" in metrics
    operations = {
        operation["operationId"]
        for path in client.get("/openapi.json").json()["paths"].values()
        for operation in path.values()
    }
    assert {
        "create_model",
        "register_version",
        "set_alias",
        "rollback_alias",
        "resolve",
    } <= operations
