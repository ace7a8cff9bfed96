"""A pytest plug-in: a team gates its models inside its own test suite.

Installed with evalhub as the `pytest11` entry point `evalhub`, it gives every pytest run the
`evalhub_gate` fixture. A pytest plug-in rather than a pre-commit hook: a gate generates with a
served model for minutes, which belongs in the test run CI already has, not in every commit.
Importing this module imports nothing but pytest, so test runs that do not use it pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from evalhub.eval.gate import GateResult


@pytest.fixture
def evalhub_gate() -> Callable[..., GateResult]:
    """`evalhub_gate("suite.yaml", candidate="bot@candidate", baseline="bot@production")`.

    Runs the gate as `evalhub gate` does (against EVALHUB_URL with EVALHUB_TOKEN, or in-process
    on EVALHUB_HOME; `endpoint` for models at an OpenAI-compatible endpoint) and fails the test
    on a regression with the gate's Markdown summary as its message; returns the GateResult.
    A suite that cannot run, or a model that cannot be reached, is an error of the test.
    """

    def run(
        *suites: str | Path,
        candidate: str,
        baseline: str,
        margin: float = 0.02,
        require_non_inferiority: bool = False,
        endpoint: str | None = None,
        api_key_env: str | None = None,
        junit: Path | None = None,
        summary: Path | None = None,
    ) -> GateResult:
        from evalhub.cli.eval import run_gate
        from evalhub.client import Client
        from evalhub.eval.gate import GatePolicy
        from evalhub.eval.report import markdown_summary, write_reports

        if not suites:
            raise ValueError("evalhub_gate needs at least one suite file")
        policy = GatePolicy(margin=margin, require_non_inferiority=require_non_inferiority)
        with Client.connect(worker=True) as client:
            result, _ = run_gate(
                client, [Path(suite) for suite in suites], candidate, baseline, policy,
                endpoint=endpoint, api_key_env=api_key_env,
            )  # fmt: skip
        write_reports(result, junit_path=junit, markdown_path=summary)
        if result.exit_code != 0:
            pytest.fail(markdown_summary(result), pytrace=False)
        return result

    return run
