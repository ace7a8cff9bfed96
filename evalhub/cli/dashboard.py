"""`evalhub dashboard`: the Streamlit dashboard against a server, or against a local one it starts.

The dashboard is a separate program that talks to the REST API only, so this command runs
`streamlit run dashboard/app.py` with EVALHUB_URL and EVALHUB_TOKEN. With no EVALHUB_URL it
first starts `evalhub serve` on EVALHUB_HOME (the embedded default, as the CLI's in-process
mode uses) and gives the dashboard an admin token of its own, revoked when it stops.
"""

from __future__ import annotations

import getpass
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated

import typer

from evalhub.cli.output import console, fail
from evalhub.settings import Settings


def app_file() -> Path:
    """dashboard/app.py of the installed distribution, found without importing it (evalhub
    imports nothing from the dashboard)."""
    spec = importlib.util.find_spec("dashboard")
    if spec is None or spec.origin is None:
        fail("the dashboard package is not installed: pip install -e .")
    return Path(spec.origin).parent / "app.py"


def dashboard(
    host: Annotated[str, typer.Option(help="Interface the dashboard listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the dashboard listens on")] = 8501,
    server_port: Annotated[
        int, typer.Option(help="Port of the local server started when EVALHUB_URL is unset")
    ] = 8000,
) -> None:
    """Open the dashboard on EVALHUB_URL with EVALHUB_TOKEN (or a login box that takes a token);
    with no EVALHUB_URL, start `evalhub serve` on EVALHUB_HOME first."""
    settings = Settings()
    signal.signal(signal.SIGTERM, _interrupt)  # a process manager's stop cleans up too
    env = dict(os.environ)
    with ExitStack() as stack:
        if settings.url:
            env["EVALHUB_URL"] = settings.url
        else:
            env["EVALHUB_URL"], env["EVALHUB_TOKEN"] = stack.enter_context(
                _local_server(settings, server_port)
            )
        url = f"http://{host}:{port}"
        console.print(
            f"dashboard: [bold]{url}[/] (server {env['EVALHUB_URL']})",
            highlight=False,
            soft_wrap=True,
        )
        command = [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(app_file()),
            "--server.address",
            host,
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--client.toolbarMode",
            "viewer",
            "--browser.gatherUsageStats",
            "false",
        ]
        try:
            subprocess.run(command, env=env, check=False)
        except KeyboardInterrupt:
            console.print("stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _local_server(settings: Settings, port: int) -> Iterator[tuple[str, str]]:
    """`evalhub serve` on the user's home, and an admin token for the dashboard's session."""
    from evalhub.auth.tokens import Role, create_token, revoke_token
    from evalhub.child_server import child_server
    from evalhub.platform import Platform

    env = {"EVALHUB_DATABASE_URL": settings.database_url} if settings.database_url else {}
    with child_server(settings.home, env, port=port) as server:
        platform = Platform.open(settings)
        name = f"dashboard-{getpass.getuser()}-{os.getpid()}"
        try:
            _, secret = create_token(platform.engine, name, Role.ADMIN, actor="evalhub dashboard")
            console.print(
                f"local server on {settings.home}: {server.url}", highlight=False, soft_wrap=True
            )
            yield server.url, secret
        finally:
            revoke_token(platform.engine, name, actor="evalhub dashboard")
            platform.close()
