"""`evalhub dashboard` with no EVALHUB_URL: it starts `evalhub serve` on EVALHUB_HOME, gives the
dashboard an admin token of its own, and revokes it when stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from evalhub.auth.tokens import list_tokens
from evalhub.child_server import INHERITED_SETTINGS, free_port
from evalhub.platform import Platform
from evalhub.settings import Settings


def test_with_no_url_it_serves_the_home_and_revokes_its_token_on_stop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    dashboard_port, server_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_SETTINGS}
    env["EVALHUB_HOME"] = str(home)
    command = [sys.executable, "-m", "evalhub", "dashboard", "--port", str(dashboard_port)]
    process = subprocess.Popen(
        [*command, "--server-port", str(server_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{dashboard_port}/_stcore/health").is_success:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stdout
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{server_port}/readyz").is_success
        platform = Platform.open(Settings(home=home, _env_file=None))
        try:
            (token,) = [t for t in list_tokens(platform.engine) if t.name.startswith("dashboard-")]
            assert token.role == "admin" and token.revoked_at is None
        finally:
            platform.close()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert f"dashboard: http://127.0.0.1:{dashboard_port}" in output
    assert f"local server on {home}: http://127.0.0.1:{server_port}" in output
    platform = Platform.open(Settings(home=home, _env_file=None))
    try:
        (token,) = [t for t in list_tokens(platform.engine) if t.name.startswith("dashboard-")]
        assert token.revoked_at is not None, "the dashboard's token outlived it"
    finally:
        platform.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server_port}/readyz")
