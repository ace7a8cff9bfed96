"""Step 8's dashboard: `evalhub dashboard` on the demo's home, left running after the demo."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from evalhub.demo.profiles import demo_files, evalhub_home
from evalhub.demo.shell import DemoFailed, console, say


def start_dashboard(home: Path) -> dict[str, Any]:
    """`evalhub dashboard` on the evalhub home of a demo on `home`, left running after the demo
    ends (it starts its own `evalhub serve` there); its URL and pid, once it answers."""
    import subprocess
    import sys

    import httpx

    from evalhub.child_server import free_port

    served, log_path = evalhub_home(home), demo_files(home) / "dashboard.log"
    port = 8501 if _port_is_free(8501) else free_port()
    command = ["evalhub", "dashboard", "--port", str(port), "--server-port", str(free_port())]
    console.print(
        f"[dim]$[/] [bold]EVALHUB_HOME={_shown(served)} {shlex.join(command)} &[/]", highlight=False
    )
    env = {k: v for k, v in os.environ.items() if k not in ("EVALHUB_URL", "EVALHUB_TOKEN")}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "evalhub", *command[1:]], env={**env, "EVALHUB_HOME": str(served)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise DemoFailed(f"the dashboard exited:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise DemoFailed("the dashboard did not answer within 180 s")
        time.sleep(0.5)
    say(f"the dashboard is up at [bold]{url}[/] (log {_shown(log_path)}); stop it "
        f"with: evalhub demo --home {_shown(home)} --stop")  # fmt: skip
    return {"url": url, "pid": process.pid}


def stop_dashboard(home: Path) -> bool:
    """Stops the dashboard an earlier demo on `home` left running (and the server it started);
    False when none was running."""
    import signal

    try:
        pid = json.loads((demo_files(home) / "summary.json").read_text())["dashboard"]["pid"]
        os.killpg(pid, signal.SIGTERM)  # its own session: the dashboard and the server it started
    except (OSError, ValueError, KeyError):
        return False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except OSError:
            break
        time.sleep(0.2)
    return True


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _shown(path: Path) -> str:
    """`path` as the user can type it from where they ran the demo: relative when it is below."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
