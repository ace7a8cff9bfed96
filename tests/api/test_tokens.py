"""Token life cycle over the real app on SQLite and PostgreSQL: the last admin token cannot be
revoked (not even by two admins revoking each other at once), and use is recorded, throttled."""

from __future__ import annotations

import threading
from typing import Any

from fastapi.testclient import TestClient

from evalhub.auth.tokens import create_token, list_tokens, revoke_token
from evalhub.platform import Platform
from registry.errors import RegistryError

API = "/api/v1"


def live_admins(platform: Platform) -> list[str]:
    return [
        t.name for t in list_tokens(platform.engine) if t.role == "admin" and t.revoked_at is None
    ]


def test_the_last_admin_token_cannot_be_revoked(
    client: TestClient, tokens: dict[str, dict[str, str]], platform: Platform
) -> None:
    admin = tokens["admin"]
    audit_before = len(client.get(f"{API}/audit", headers=admin).json()["data"])

    refused = client.delete(f"{API}/tokens/admin-token", headers=admin)
    assert refused.status_code == 409
    assert "last admin token" in refused.json()["error"]["message"]
    assert live_admins(platform) == ["admin-token"]
    assert client.get(f"{API}/tokens", headers=admin).status_code == 200
    assert len(client.get(f"{API}/audit", headers=admin).json()["data"]) == audit_before

    # With a second admin the first may go; then the second is the last one.
    created = client.post(f"{API}/tokens", headers=admin, json={"name": "ops", "role": "admin"})
    ops = {"Authorization": f"Bearer {created.json()['token']}"}
    assert client.delete(f"{API}/tokens/admin-token", headers=ops).status_code == 200
    assert client.delete(f"{API}/tokens/ops", headers=ops).status_code == 409
    assert live_admins(platform) == ["ops"]
    # Revoking editors and viewers is never refused.
    assert client.delete(f"{API}/tokens/viewer-token", headers=ops).status_code == 200


def test_two_admins_revoking_each_other_at_once_leave_one(platform: Platform) -> None:
    for name in ("alice", "bob"):
        create_token(platform.engine, name, "admin", actor="test")
    outcomes: dict[str, Any] = {}
    start = threading.Barrier(2)

    def revoke(name: str, actor: str) -> None:
        start.wait()
        try:
            outcomes[name] = revoke_token(platform.engine, name, actor=actor)
        except RegistryError as error:
            outcomes[name] = error

    threads = [
        threading.Thread(target=revoke, args=("alice", "bob")),
        threading.Thread(target=revoke, args=("bob", "alice")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    refused = [name for name, outcome in outcomes.items() if isinstance(outcome, RegistryError)]
    assert len(refused) == 1, outcomes
    assert live_admins(platform) == refused


def test_last_used_at_is_set_and_throttled(
    client: TestClient, tokens: dict[str, dict[str, str]], platform: Platform
) -> None:
    def last_used(name: str) -> Any:
        return next(t.last_used_at for t in list_tokens(platform.engine) if t.name == name)

    assert last_used("editor-token") is None
    assert client.get(f"{API}/models", headers=tokens["editor"]).status_code == 200
    first = last_used("editor-token")
    assert first is not None
    platform.tokens.invalidate()  # past the cache: the database is read again
    assert client.get(f"{API}/models", headers=tokens["editor"]).status_code == 200
    assert last_used("editor-token") == first
    assert last_used("viewer-token") is None
