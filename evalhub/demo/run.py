"""`run_demo`: the whole loop offline on CPU, on a tiny model or on SmolLM2-135M-Instruct,
with the commands users type.

A real `evalhub serve` runs on a fresh home (SQLite, local artifact store). Every step is an
`evalhub` command against it (run in this process, printed before its output) or the stock
`openai` client: build a base model, register the data, fine-tune LoRA and DoRA adapters with
checkpoints scored on the held-out suite, run an experiment, evaluate and gate the winner, canary
it under the rollout controller until it is promoted, canary a broken adapter until the
controller rolls it back, catch drifted traffic, and export it as eval cases.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.table import Table

from evalhub.demo.dashboard import start_dashboard, stop_dashboard
from evalhub.demo.files import write_files
from evalhub.demo.profiles import BASES, METHODS, QUICK, demo_files, evalhub_home
from evalhub.demo.shell import Demo, DemoFailed, console, heading, say, server_on
from evalhub.demo.steps import (
    base_and_data,
    canary_promoted,
    canary_rolled_back,
    drift,
    evaluate,
    fine_tune,
)


def summary(demo: Demo, seconds: float) -> None:
    """The table of what the demo measured."""
    measured = demo.measured
    view = Table(title=f"evalhub demo: what it measured ({seconds:.0f} s)")
    view.add_column("what")
    view.add_column("result")
    scores = measured["eval"]
    for name in scores["winner"]:
        change = f"{_figure(scores['base'].get(name))} -> {_figure(scores['winner'][name])}"
        view.add_row(f"{name}: base -> {measured['winner']}", change)
    view.add_row("gate (winner against the base)", measured["gate"])
    for method, job in measured["jobs"].items():
        score = f"exact_match {_figure(job['exact_match'])} at its best checkpoint"
        view.add_row(f"{METHODS[method]} job, {job['steps']} steps: {job['version']}", score)
    promoted = measured["promoted"]
    view.add_row("canary of the winner",
                 f"promoted after {promoted['canary_requests']} canary requests; "
                 f"@production is {promoted['production']}")  # fmt: skip
    rolled = measured["rolled_back"]
    view.add_row(f"canary of {rolled['version']} (scrambled answers)",
                 f"rolled back after {rolled['canary_requests']} canary requests: "
                 f"{rolled['reason']}")  # fmt: skip
    found = measured["drift"]
    view.add_row("drift check on shifted traffic",
                 f"{'DRIFT' if found['drifted'] else 'no drift'} ({found['share_drifted']:.0%} of "
                 f"columns); alert {found['alert']} at {found['alert_value']:.3g}")  # fmt: skip
    view.add_row("drifted requests exported as eval cases", found["exported"])
    console.print(view)


def _figure(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


def _quiet_libraries() -> None:
    """The demo prints its own progress; library progress bars and deprecations are noise here."""
    import warnings

    from transformers.utils import logging as transformers_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def run_demo(home: Path, *, model: str = "tiny", quick: bool = False) -> dict[str, Any]:
    """Runs the loop on a fresh `home`; returns what it measured (also in summary.json among
    its files, `demo_files(home)`)."""
    from evalhub.finetune.tasks import as_eval_cases, order_task

    _quiet_libraries()
    home = home.resolve()
    if home.exists():
        stop_dashboard(home)
        shutil.rmtree(home)
    work = demo_files(home)
    work.mkdir(parents=True)
    base = BASES[model]
    if model == "smollm2":
        from evalhub.finetune.gguf import GgufError, packaged_smollm2

        try:
            packaged_smollm2()  # before anything starts
        except GgufError as error:
            raise DemoFailed(str(error)) from None
    if quick:
        base = replace(base, sizes=QUICK)
    started = time.perf_counter()
    console.print(
        f"[bold]evalhub demo[/] in {home}{' (quick)' if quick else ''}: SQLite, a local artifact "
        f"store, CPU, offline; the files it writes are in {work}"
    )
    write_files(work, base)
    heading(1, "start evalhub serve on a fresh home")
    with server_on(evalhub_home(home), base) as server:
        say(f"evalhub serve is up at {server.url} (EVALHUB_URL and EVALHUB_TOKEN set for the CLI)")
        traffic = as_eval_cases(order_task(89, seed=1, split="held_out"))
        demo = Demo(server.url, server.token, work, base, traffic)
        cwd = Path.cwd()
        os.chdir(work)
        try:
            timings = demo.measured["step_seconds"] = {}
            steps = (base_and_data, fine_tune, evaluate, canary_promoted, canary_rolled_back, drift)
            for step in steps:
                step_started = time.perf_counter()
                step(demo)
                timings[step.__name__] = round(time.perf_counter() - step_started, 1)
        except Exception:
            console.print(f"[red]the server's last lines:[/]\n{server.tail()}", highlight=False)
            raise
        finally:
            os.chdir(cwd)
    heading(8, "the dashboard, and what the demo measured")
    demo.measured["dashboard"] = start_dashboard(home)
    seconds = time.perf_counter() - started
    demo.measured["seconds"] = round(seconds, 1)
    (work / "summary.json").write_text(json.dumps(demo.measured, indent=2, default=str))
    summary(demo, seconds)
    return demo.measured
