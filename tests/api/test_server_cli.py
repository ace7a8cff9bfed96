"""The README's flow for real: `evalhub serve` under uvicorn on 127.0.0.1, driven by the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from evalhub.child_server import child_server
from tests.conftest import DATABASES


class Server:
    def __init__(self, url: str, admin_token: str, env: dict[str, str]) -> None:
        self.url = url
        self.admin_token = admin_token
        self.env = env

    def cli(
        self, *args: str, token: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        env = {**self.env, "EVALHUB_URL": self.url, "EVALHUB_TOKEN": token or self.admin_token}
        result = subprocess.run(
            [sys.executable, "-m", "evalhub", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[Server]:
    env = {"EVALHUB_DATABASE_URL": database_url, "COLUMNS": "200"}
    with child_server(tmp_path / "home", env) as child:
        assert child.token, "serve printed no admin token on a fresh home"
        assert httpx.get(f"{child.url}/readyz").json()["status"] == "ok"
        yield Server(child.url, child.token, child.env)


# On PostgreSQL: the docs test runs the README's CLI-through-a-server sessions on SQLite.
@pytest.mark.parametrize("database_url", DATABASES[1:], indirect=True)
def test_readme_flow_through_cli_and_server(server: Server, model_dirs, tmp_path: Path) -> None:
    editor = (
        server.cli("token", "create", "--name", "ci", "--role", "editor")
        .stdout.strip()
        .splitlines()[-1]
    )
    assert editor.startswith("ehk_")

    server.cli("models", "create", "tiny", "--kind", "base", token=editor)
    out = server.cli(
        "versions", "register", str(model_dirs["base"]), "--model", "tiny", token=editor
    ).stdout
    assert "registered tiny/1" in out
    for adapter in ("adapter", "adapter2"):
        out = server.cli(
            "versions", "register", str(model_dirs[adapter]), "--model", "bot", "--base", "tiny/1",
            token=editor,
        ).stdout  # fmt: skip
    assert "registered bot/2" in out

    # An editor may not move @production: one clear line, non-zero exit, nothing moved.
    refused = server.cli("alias", "set", "bot@production", "1", token=editor, check=False)
    assert refused.returncode == 1 and "needs the admin role" in refused.stderr
    assert "Traceback" not in refused.stderr

    server.cli("alias", "set", "bot@production", "1", "--reason", "launch")
    server.cli("alias", "set", "bot@production", "2")
    assert "2 -> 1" in server.cli("alias", "rollback", "bot@production").stdout
    history = json.loads(server.cli("alias", "history", "bot@production", "--json").stdout)
    assert [(h["from_version"], h["to_version"]) for h in history] == [(None, 1), (1, 2), (2, 1)]
    shown = json.loads(server.cli("resolve", "bot@production", "--json").stdout)
    assert shown["ref"] == "bot/1" and shown["base"] == "tiny/1"

    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}) + "\n"
            for i in range(10)
        )
    )
    assert (
        "added chats/1 (10 rows"
        in server.cli("datasets", "add", str(data), "--name", "chats").stdout
    )
    assert (
        "already stored as chats/1"
        in server.cli("datasets", "add", str(data), "--name", "chats").stdout
    )

    missing = server.cli("versions", "show", "bot/9", check=False)
    assert missing.returncode == 1 and "no version 9" in missing.stderr
    audit = json.loads(server.cli("audit", "--json").stdout)
    assert {"alias.rollback", "version.create", "token.create"} <= {a["action"] for a in audit}

    # The REST API answers the same, with the token.
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    lineage = httpx.get(
        f"{server.url}/api/v1/models/tiny/versions/1/lineage", headers=headers
    ).json()
    assert lineage["derived"] == ["bot/1", "bot/2"]
    assert "evalhub_http_requests_total" in httpx.get(f"{server.url}/metrics").text


def test_cli_in_process_uses_the_local_home(tmp_path: Path, model_dirs) -> None:
    env = {**os.environ, "EVALHUB_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    for key in ("EVALHUB_URL", "EVALHUB_TOKEN", "EVALHUB_DATABASE_URL"):
        env.pop(key, None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "evalhub", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    result = cli("versions", "register", str(model_dirs["base"]), "--model", "tiny")
    assert result.returncode == 0, result.stderr
    assert "registered tiny/1" in result.stdout
    assert (tmp_path / "home" / "evalhub.db").is_file()
    listed = json.loads(cli("models", "list", "--json").stdout)
    assert [m["name"] for m in listed] == ["tiny"]
    bad = cli("alias", "set", "tiny", "1")
    assert bad.returncode == 1 and "name@alias" in bad.stderr
