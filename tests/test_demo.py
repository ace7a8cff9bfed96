"""`evalhub demo`, as `make demo` runs it: the whole loop against a real server, on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_the_demo_runs_the_loop_and_leaves_it_inspectable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALHUB_")}
    env |= {"COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    home = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "evalhub", "demo", "--home", str(home)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "evalhub gate: PASS" in output
    assert "@production of tiny-upper: 1 -> 2 (rollback by admin)" in output

    # What it left behind is a home a user can open: the CLI in-process on it agrees.
    def cli(*args: str) -> dict:
        shown = subprocess.run(
            [sys.executable, "-m", "evalhub", *args, "--json"],
            env={**env, "EVALHUB_HOME": str(home / "home")}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)

    assert cli("versions", "show", "tiny-upper@production")["ref"] == "tiny-upper/2"
    history = cli("alias", "history", "tiny-upper@production")
    assert [entry["action"] for entry in history] == ["set", "set", "set", "rollback"]
    gate = json.loads((home / "work" / "gate.json").read_text())
    assert gate["decision"] == "pass" and gate["exit_code"] == 0
    candidate = gate["runs"][0]["candidate"]["metrics"]["exact_match"]["aggregate"]["value"]
    assert candidate >= 0.8
