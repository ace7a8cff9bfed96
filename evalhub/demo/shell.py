"""What the steps share: the server, the demo's state, and printing what a user would type."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.syntax import Syntax

from evalhub.demo.profiles import Base

console = Console()


class DemoFailed(RuntimeError):
    """A step of the demo did not do what it should; the message says which."""


@dataclass
class Demo:
    """What the steps share: the server, the work directory and what was measured so far."""

    url: str
    token: str
    work: Path
    base: Base
    traffic: list[dict[str, Any]]  # what users ask: the task's held-out sentences, in turn
    measured: dict[str, Any] = field(default_factory=dict)
    users: int = 0  # users so far: each request comes from a new user

    @property
    def openai(self) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=self.token, max_retries=0)

    def api(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """The REST API, for what the demo reads back (ids, states); users see the CLI's view."""
        import httpx

        reply = httpx.request(
            method, f"{self.url}/api/v1{path}", json=body, params=params or None,
            headers={"Authorization": f"Bearer {self.token}"}, timeout=600,
        )  # fmt: skip
        if reply.status_code >= 400:
            raise DemoFailed(f"{method} {path}: HTTP {reply.status_code} {reply.text}")
        return reply.json()


def heading(number: int, text: str) -> None:
    console.print(f"\n[bold cyan]{number}/8[/] {text}")


def say(text: str) -> None:
    console.print(f"  {text}", highlight=False, soft_wrap=True)


def evalhub(*args: str, expect: int = 0) -> None:
    """Runs one `evalhub` command in this process, as a user would type it against the server."""
    from evalhub.cli.main import app

    console.print(f"[dim]$[/] [bold]evalhub {shlex.join(args)}[/]", highlight=False)
    code = app(list(args), standalone_mode=False, prog_name="evalhub") or 0
    if code != expect:
        raise DemoFailed(f"`evalhub {shlex.join(args)}` exited {code}, expected {expect}")


def show_python(code: str) -> None:
    """Shows Python a user would write; the demo then runs the same calls."""
    console.print(Syntax(code.strip(), "python", theme="ansi_dark", background_color="default"))


@contextmanager
def server_on(home: Path, base: Base) -> Iterator[Any]:
    """`evalhub serve` on the demo's home; the CLI in this process talks to it."""
    from evalhub.child_server import child_server

    # Monitor passes every 2 s (10 by default), so the controller acts while the demo watches.
    settings = {"EVALHUB_MONITOR_INTERVAL": "2", "EVALHUB_PRICES": json.dumps(base.prices)}
    console.print("[dim]$[/] [bold]evalhub serve[/]", highlight=False)
    with child_server(home, settings) as server:
        if not server.token:
            raise DemoFailed("evalhub serve printed no admin token:\n" + server.tail())
        saved = {key: os.environ.get(key) for key in ("EVALHUB_URL", "EVALHUB_TOKEN")}
        os.environ.update(EVALHUB_URL=server.url, EVALHUB_TOKEN=server.token)
        try:
            yield server
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
