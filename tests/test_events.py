"""Change events on SQLite and PostgreSQL: one per committed change, none for a refused or
rolled-back one, heard by this process at once and by another process (a second platform on the
same database, with its own watcher) within the stated delay."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from evalhub.events import Change
from evalhub.platform import Platform
from evalhub.serving.backends import BackendCreate, BackendService
from evalhub.serving.deployments import DeploymentCreate, DeploymentService
from evalhub.settings import Settings
from registry.db import writer
from registry.entities import ModelKind, Mutation
from registry.errors import RegistryError
from tests.scripted_server import ScriptedServer


class Heard:
    def __init__(self, platform: Platform) -> None:
        self.changes: list[Change] = []
        self._lock = threading.Lock()
        platform.events.subscribe(self._hear)

    def _hear(self, change: Change) -> None:
        with self._lock:
            self.changes.append(change)

    def actions(self) -> list[str]:
        with self._lock:
            return [c.action for c in self.changes]

    def wait_for(self, count: int, seconds: float = 5.0) -> list[str]:
        deadline = time.monotonic() + seconds
        while len(self.actions()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.6)  # and nothing more arrives: no duplicates from the database path
        return self.actions()


@pytest.fixture
def registered(platform: Platform, model_dirs) -> Platform:  # type: ignore[no-untyped-def]
    platform.registry.create_model("tiny", ModelKind.BASE, actor="test")
    platform.registry.register_version("tiny", model_dirs["base"], actor="test")
    platform.registry.register_version("tiny", model_dirs["base_copy"], actor="test")
    return platform


def test_one_event_per_committed_change_and_none_for_refused_or_rolled_back(
    registered: Platform,
) -> None:
    heard = Heard(registered)
    registered.registry.set_alias("tiny", "staging", 1, actor="ann")
    assert heard.actions() == ["alias.set"]  # delivered on commit, before the call returns
    change = heard.changes[0]
    assert change.resource == "models/tiny/aliases/staging" and change.model == "tiny"
    assert change.actor == "ann" and change.after is not None

    with pytest.raises(RegistryError):
        registered.registry.set_alias("tiny", "staging", 99, actor="ann")  # no such version
    with Session(writer(registered.engine)) as session:  # recorded, then rolled back
        registered.events.record(
            session, Mutation(actor="ann", action="model.update", resource="models/tiny")
        )
        session.rollback()
    registered.registry.set_alias("tiny", "staging", 2, actor="ann")
    assert heard.wait_for(2) == ["alias.set", "alias.set"]
    assert heard.changes[1].after is not None and heard.changes[1].after["version"] == 2


def test_another_process_hears_each_change_once(
    registered: Platform, tmp_path: Path, database_url: str, start_scripted_server: Any
) -> None:
    upstream = start_scripted_server(ScriptedServer(lambda body: "hi", served_models=["tiny/1"]))
    other = Platform.open(
        Settings(home=tmp_path / "other", database_url=database_url, _env_file=None)
    )
    try:
        elsewhere = Heard(other)
        here = Heard(registered)
        started = time.monotonic()
        registered.registry.set_alias("tiny", "production", 1, actor="ann")
        BackendService(registered, None).create(
            BackendCreate(name="b", base="tiny/1", managed=False, url=upstream.base_url),
            actor="ann",
        )
        DeploymentService(registered).create(
            DeploymentCreate.model_validate(
                {
                    "name": "bot",
                    "backend": "b",
                    "arms": [{"name": "a", "model": "tiny/1", "weight": 100}],
                }
            ),
            actor="ann",
        )
        expected = ["alias.set", "backend.create", "deployment.create"]
        assert elsewhere.wait_for(3) == expected
        assert time.monotonic() - started < 3.0
        assert here.actions() == expected
        assert [c.id for c in elsewhere.changes] == [c.id for c in here.changes]
    finally:
        other.close()
