"""A suite sent to the server cannot make it import or call what its operator did not install.

The probe's case: a metric named `os:system` with `options: {command: ...}` ran the command while
the suite was being validated. Every request here goes through the real app and database.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from evalhub.api.app import create_app
from evalhub.auth.tokens import create_token
from evalhub.eval import MetricError, create_metric
from evalhub.eval.metrics import MetricPolicy
from evalhub.platform import Platform
from evalhub.settings import Settings
from tests.eval.scripted_capitals import DATASET

API = "/api/v1"


def suite_naming(metric: dict[str, object]) -> str:
    return yaml.safe_dump(
        {"name": "probe", "version": 1, "dataset": "capitals.jsonl", "metrics": [metric]}
    )


def body(metric: dict[str, object]) -> dict[str, object]:
    return {
        "suite": suite_naming(metric),
        "filename": "probe.yaml",
        "dataset": DATASET.read_text(encoding="utf-8"),
        "target": {"model": "m", "endpoint": "http://127.0.0.1:9/v1"},
    }


@pytest.fixture
def editor_api(platform: Platform) -> Iterator[tuple[TestClient, dict[str, str]]]:
    _, secret = create_token(platform.engine, "editor-token", "editor", actor="test")
    with TestClient(create_app(platform=platform)) as client:
        yield client, {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def tripwire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable module that leaves a file behind when it is imported or called."""
    package = tmp_path / "site"
    package.mkdir()
    marker = tmp_path / "imported"
    (package / "tripwire_metrics.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "def metric(**options):\n    raise SystemExit('called')\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(package))
    yield marker
    sys.modules.pop("tripwire_metrics", None)


def runs(platform: Platform) -> int:
    from sqlmodel import Session, func, select

    from evalhub.eval.tables import EvalRunRow

    with Session(platform.engine) as session:
        return session.exec(select(func.count()).select_from(EvalRunRow)).one()


def test_a_suite_naming_os_system_is_refused_and_its_command_never_runs(
    editor_api: tuple[TestClient, dict[str, str]], platform: Platform, tmp_path: Path
) -> None:
    client, editor = editor_api
    touched = tmp_path / "pwned"
    for name in ("os:system", "subprocess:run", "builtins:exec", "posix:system"):
        metric = {"name": name, "options": {"command": f"touch {touched}"}}
        response = client.post(f"{API}/evals", headers=editor, json=body(metric))
        assert response.status_code == 400, response.text
        message = response.json()["error"]["message"]
        assert "is not allowed here" in message and "EVALHUB_METRIC_MODULES" in message
    assert not touched.exists()
    assert runs(platform) == 0


def test_a_module_named_by_a_request_is_not_even_imported(
    editor_api: tuple[TestClient, dict[str, str]], tripwire: Path
) -> None:
    client, editor = editor_api
    response = client.post(
        f"{API}/evals", headers=editor, json=body({"name": "tripwire_metrics:metric"})
    )
    assert response.status_code == 400, response.text
    assert not tripwire.exists()
    assert "tripwire_metrics" not in sys.modules


def test_an_option_naming_a_server_path_is_refused(
    editor_api: tuple[TestClient, dict[str, str]], tmp_path: Path
) -> None:
    client, editor = editor_api
    metric = {"name": "semantic_similarity", "options": {"model": str(tmp_path)}}
    response = client.post(f"{API}/evals", headers=editor, json=body(metric))
    assert response.status_code == 400, response.text
    assert "names a path on the server" in response.json()["error"]["message"]


def test_modules_the_operator_allows_load_over_the_api(tmp_path: Path, database_url: str) -> None:
    settings = Settings(
        home=tmp_path / "home",
        database_url=database_url,
        metric_modules=["tests.eval"],
        _env_file=None,
    )
    platform = Platform.open(settings)
    try:
        _, secret = create_token(platform.engine, "editor-token", "editor", actor="test")
        editor = {"Authorization": f"Bearer {secret}"}
        with TestClient(create_app(platform=platform)) as client:
            allowed = {"name": "tests.eval.test_metrics:shouting", "options": {"threshold": 0.2}}
            accepted = client.post(f"{API}/evals", headers=editor, json=body(allowed))
            assert accepted.status_code == 202, accepted.text
            # Allowed modules still cannot hand out what they merely imported.
            imported = {"name": "tests.eval.test_metrics:create_metric"}
            refused = client.post(f"{API}/evals", headers=editor, json=body(imported))
            assert refused.status_code == 400, refused.text
            assert "not a metric factory defined in" in refused.json()["error"]["message"]
            elsewhere = client.post(
                f"{API}/evals", headers=editor, json=body({"name": "os:system"})
            )
            assert elsewhere.status_code == 400
    finally:
        platform.close()


def test_the_users_own_machine_still_loads_its_own_modules(tripwire: Path) -> None:
    with pytest.raises(SystemExit, match="called"):
        create_metric("tripwire_metrics:metric")
    assert tripwire.exists()
    server = MetricPolicy.for_server(["tripwire"])
    with pytest.raises(MetricError, match="is not allowed here"):
        create_metric("tripwire_metrics:metric", policy=server)


@pytest.mark.parametrize("filename", ["..", "../../etc/cron.d/x.yaml", "..\\..\\x.yaml"])
def test_a_suite_filename_is_a_label_never_a_path(
    editor_api: tuple[TestClient, dict[str, str]], filename: str
) -> None:
    client, editor = editor_api
    request = body({"name": "exact_match"}) | {"filename": filename}
    response = client.post(f"{API}/evals", headers=editor, json=request)
    assert response.status_code == 202, response.text
    assert not Path("/etc/cron.d/x.yaml").exists()
    long = client.post(f"{API}/evals", headers=editor, json=request | {"filename": "s" * 300})
    assert long.status_code == 422, long.text
