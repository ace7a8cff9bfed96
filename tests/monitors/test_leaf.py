"""monitors is a leaf: importing it loads no web framework, database, torch or Evidently."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("evalhub", "registry", "dashboard", "torch", "evidently", "fastapi", "sqlalchemy")


def test_importing_the_monitors_loads_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import monitors.alerts, monitors.cost, monitors.descriptors, monitors.drift\n"
        "import monitors.quality, monitors.rollout, monitors.sequential\n"
        f"print(sorted(name for name in {FORBIDDEN!r} if name in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
