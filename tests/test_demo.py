"""`evalhub demo`, as `make demo` runs it: the whole loop against a real server, on CPU."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from evalhub.auth.tokens import create_token
from evalhub.child_server import child_server
from evalhub.demo import QUICK, demo_files, evalhub_home
from evalhub.platform import Platform
from evalhub.settings import Settings

ENV = {k: v for k, v in os.environ.items() if not k.startswith("EVALHUB_")} | {
    "COLUMNS": "200",
    "OMP_NUM_THREADS": "1",
}
WORKFLOW = Path(__file__).parents[1] / "examples" / "github-actions" / "evalhub-gate.yml"
# The second test opens the home the first one's demo left: both on one worker.
pytestmark = pytest.mark.xdist_group("demo")


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-run") / "demo"


def test_the_demo_runs_the_loop_and_leaves_it_inspectable(demo_home: Path) -> None:
    """`evalhub demo --quick`: the loop of `make demo` with less data and fewer steps."""
    env = ENV
    home = demo_home
    done = subprocess.run(
        [sys.executable, "-m", "evalhub", "demo", "--home", str(home), "--quick"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    measured = json.loads((demo_files(home) / "summary.json").read_text())
    dashboard = measured["dashboard"]
    try:
        # 8. The dashboard it started answers, on the demo's home, after the demo ended; the
        # command the demo prints stops it, with the server it started.
        assert httpx.get(f"{dashboard['url']}/_stcore/health", timeout=10).text == "ok"
        assert f"evalhub demo --home {home} --stop" in " ".join(output.split())
        stop = [sys.executable, "-m", "evalhub", "demo", "--home", str(home), "--stop"]
        stopped = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=60)
        assert "stopped the demo's dashboard" in stopped.stdout, stopped.stdout + stopped.stderr
        with pytest.raises(ProcessLookupError):
            os.killpg(dashboard["pid"], 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dashboard["pid"], signal.SIGTERM)
    # 3. Both jobs scored their checkpoints on the suite; the experiment's winner is a candidate.
    assert output.count("Selected step") == 2 and "exact_match on the suite" in output
    winner = measured["winner"]
    assert winner.startswith("tiny-json/")
    # 4. The winner beats the untrained base on the suite, and the gate says so.
    base, tuned = measured["eval"]["base"], measured["eval"]["winner"]
    assert tuned["exact_match"] >= base["exact_match"] + 0.5
    assert tuned["json_schema"] >= 0.9 > base["json_schema"]
    assert measured["gate"] == "pass" and "evalhub gate: PASS" in output
    assert tuned["exact_match"] > measured["jobs"]["lora"]["exact_match"]  # beats the release
    assert "by meaning (clusters of the prompts)" in output
    # 5. The controller promoted the winner; 6. it rolled the scrambled adapter back.
    assert measured["promoted"]["production"] == winner
    rolled = measured["rolled_back"]
    assert rolled["action"] == "rollback" and "json_schema" in rolled["reason"]
    # 7. Shifted traffic drifts, the alert fires, and the drifted requests became eval cases.
    drift = measured["drift"]
    assert drift["drifted"] and drift["alert"] == "metric:json_schema < 0.9"

    # What it left behind is a home a user can open: the CLI in-process on it agrees.
    def cli(*args: str) -> Any:
        shown = subprocess.run(
            [sys.executable, "-m", "evalhub", *args, "--json"],
            env={**env, "EVALHUB_HOME": str(evalhub_home(home))}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)

    assert cli("versions", "show", "tiny-json@production")["ref"] == winner
    history = cli("alias", "history", "tiny-json@production")
    assert [entry["actor"] for entry in history] == ["admin", "rollout-controller"]
    (exported,) = cli("datasets", "show", "drifted-orders")["versions"]
    assert (exported["ref"], exported["format"], exported["row_count"]) == (
        drift["exported"],
        "eval",
        QUICK.shifted_requests,
    )
    gate = json.loads((demo_files(home) / "gate.json").read_text())
    assert gate["decision"] == "pass" and gate["exit_code"] == 0


def gate_step(inputs: dict[str, str]) -> str:
    """The workflow's "Run the gate" step as bash, its `${{ inputs.* }}` filled in."""
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    (script,) = [step["run"] for step in jobs["gate"]["steps"] if step.get("id") == "gate"]
    for name, value in inputs.items():
        script = script.replace("${{ inputs." + name + " }}", value)
    assert "${{" not in script, script
    return script


def test_the_ci_workflow_and_the_pytest_plugin_gate_the_demos_models(
    demo_home: Path, tmp_path: Path
) -> None:
    if not evalhub_home(demo_home).exists():
        pytest.fail("the demo did not run (test_the_demo_runs_the_loop_... failed first)")
    platform = Platform.open(Settings(home=evalhub_home(demo_home), _env_file=None))
    token = create_token(platform.engine, "ci", "editor", actor="test")[1]
    platform.close()
    suite = demo_files(demo_home) / "suite.yaml"
    winner = json.loads((demo_files(demo_home) / "summary.json").read_text())["winner"]
    # The workflow runs `evalhub` from PATH, as a runner that pip-installed it would.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    with child_server(evalhub_home(demo_home)) as server:  # restarts the demo's backend
        env = ENV | {"EVALHUB_URL": server.url, "EVALHUB_TOKEN": token, "PATH": path}
        for candidate, baseline, code, heading in (
            (winner, "tiny/1", 0, "evalhub gate: PASS"),
            ("tiny/1", winner, 1, "evalhub gate: REGRESSION"),
        ):
            work = tmp_path / f"ci-{code}"
            work.mkdir()
            github = {"GITHUB_OUTPUT": str(work / "out"), "GITHUB_STEP_SUMMARY": str(work / "sum")}
            inputs = {"suites": str(suite), "candidate": candidate, "baseline": baseline,
                      "margin": "0.02", "endpoint": ""}  # fmt: skip
            step = subprocess.run(
                ["bash", "-e", "-c", gate_step(inputs)], cwd=work, env=env | github,
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert step.returncode == 0, (
                step.stdout + step.stderr
            )  # the step records, a later fails
            assert (work / "out").read_text().strip() == f"exit-code={code}"
            assert heading in (work / "evalhub-gate.md").read_text()
            assert (work / "sum").read_text() == (work / "evalhub-gate.md").read_text()
            junit = ElementTree.parse(work / "evalhub-gate.xml").getroot()
            failures = sum(int(s.get("failures", 0)) for s in junit.iter("testsuite"))
            assert (failures == 0) == (code == 0), ElementTree.tostring(junit)[:500]
            assert json.loads((work / "evalhub-gate.json").read_text())["exit_code"] == code

        # The same gate from a team's own test suite, through the evalhub_gate fixture.
        tests = tmp_path / "team" / "test_models.py"
        tests.parent.mkdir()
        tests.write_text(
            f"SUITE = {str(suite)!r}\n\n"
            "def test_candidate_ships(evalhub_gate):\n"
            f"    result = evalhub_gate(SUITE, candidate={winner!r}, baseline='tiny/1')\n"
            "    assert result.decision == 'pass'\n\n"
            "def test_the_base_regresses(evalhub_gate):\n"
            f"    evalhub_gate(SUITE, candidate='tiny/1', baseline={winner!r})\n"
        )
        ran = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
            cwd=tests.parent, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "1 failed, 1 passed" in ran.stdout, ran.stdout
    assert "test_the_base_regresses" in ran.stdout and "REGRESSION" in ran.stdout
