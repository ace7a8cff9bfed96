"""`evalhub demo`: the whole loop on a tiny model, offline, on CPU, with the commands users type.

A real `evalhub serve` runs on a fresh home; every step is an `evalhub` command against it (run in
this process, printed before its output), plus the stock `openai` client for traffic. Build a base
model, fine-tune two LoRA adapters as jobs, serve them, evaluate through the gateway, gate the
candidate against production, split traffic between them, roll out, and roll back a bad push.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console()

TRAIN_EXAMPLES = 1600
HELD_OUT_EXAMPLES = 60
TRAFFIC_USERS = 200
SUITE = """\
name: upper
version: "1"
dataset: held-out.jsonl
sampling: {temperature: 0, max_tokens: 24, seed: 0}
metrics:
  - name: exact_match
    threshold: 0.8
"""


class DemoFailed(RuntimeError):
    """A step of the demo did not do what it should; the message says which."""


def _step(number: int, total: int, text: str) -> None:
    console.print(f"\n[bold cyan]{number}/{total}[/] {text}")


def evalhub(*args: str, expect: int = 0) -> None:
    """Runs one `evalhub` command in this process, as a user would type it against the server."""
    from evalhub.cli.main import app

    console.print(f"[dim]$[/] [bold]evalhub {shlex.join(args)}[/]", highlight=False)
    code = app(list(args), standalone_mode=False, prog_name="evalhub") or 0
    if code != expect:
        raise DemoFailed(f"`evalhub {shlex.join(args)}` exited {code}, expected {expect}")


@contextmanager
def _server(home: Path) -> Iterator[Any]:
    """`evalhub serve` on the demo's home; the CLI in this process talks to it."""
    from evalhub.child_server import child_server

    with child_server(home) as server:
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


def _write_data(work: Path) -> None:
    from evalhub.finetune.tasks import upper_case_task, write_jsonl

    write_jsonl(work / "train.jsonl", upper_case_task(TRAIN_EXAMPLES, seed=0, split="train"))
    held_out = upper_case_task(HELD_OUT_EXAMPLES, seed=0, split="held_out")
    write_jsonl(work / "val.jsonl", held_out[:20])
    cases = [
        {"id": f"case-{i:03d}", "messages": row["messages"][:-1],
         "expected": row["messages"][-1]["content"]}
        for i, row in enumerate(held_out)
    ]  # fmt: skip
    write_jsonl(work / "held-out.jsonl", cases)
    (work / "suite.yaml").write_text(SUITE)
    for name, steps, seed in (("job-quick.yaml", 80, 1), ("job-full.yaml", 200, 0)):
        (work / name).write_text(
            "model: tiny\ntraining_file: train.jsonl\nvalidation_file: val.jsonl\n"
            f"suffix: upper\nseed: {seed}\nmethod: lora\noptions: {{rank: 16}}\n"
            f"training: {{max_steps: {steps}, warmup_ratio: 0.05}}\n"
            "hyperparameters: {batch_size: 16, learning_rate_multiplier: 15}\n"
        )


def _traffic(server: Any, deployment: str, cases: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """Each user asks once with the stock `openai` client; returns the versions each arm served."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.token, max_retries=0)
    served: dict[str, Counter[str]] = {}
    for index in range(TRAFFIC_USERS):
        raw = client.chat.completions.with_raw_response.create(
            model=deployment,
            messages=cases[index % len(cases)]["messages"],
            user=f"user-{index}",
            temperature=0,
            max_tokens=12,
        )
        arm = raw.headers["x-evalhub-arm"]
        served.setdefault(arm, Counter())[raw.headers["x-evalhub-model-version"]] += 1
    return served


def _quiet_libraries() -> None:
    """The demo prints its own progress; library progress bars and deprecations are noise here."""
    import warnings

    from transformers.utils import logging as transformers_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def run_demo(home: Path, *, fresh: bool = True) -> None:
    from evalhub.finetune.tasks import read_jsonl

    _quiet_libraries()
    home = home.resolve()
    if fresh and home.exists():
        shutil.rmtree(home)
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    total = 8
    console.print(
        f"[bold]evalhub demo[/] in {home}: SQLite, local artifact store, CPU, offline; "
        f"the files it writes are in {work}"
    )
    with _server(home / "home") as server:
        console.print(f"  evalhub serve is up at {server.url} (EVALHUB_URL, EVALHUB_TOKEN set)")
        cwd = Path.cwd()
        os.chdir(work)
        try:
            _write_data(work)
            _step(1, total, "build a tiny Llama base model offline and register it")
            evalhub("models", "create-tiny", "tiny")

            _step(2, total, "fine-tune two LoRA adapters as jobs: a quick one and a full one")
            evalhub("finetune", "run", "job-quick.yaml")
            evalhub("finetune", "run", "job-full.yaml")

            _step(3, total, "the quick adapter is in production; the full one is the candidate")
            evalhub("alias", "set", "tiny-upper@production", "1", "--reason", "first release")
            evalhub("alias", "set", "tiny-upper@candidate", "2")

            _step(4, total, "serve the base model; the gateway hot-loads the adapters")
            evalhub("backend", "local", "--base", "tiny/1", "--name", "cpu-1")

            _step(5, total, f"evaluate on {HELD_OUT_EXAMPLES} unseen cases, through the gateway")
            evalhub("eval", "run", "suite.yaml", "--model", "tiny/1", "--output", "base.json")
            baseline = json.loads((work / "base.json").read_text())
            base_score = baseline["metrics"]["exact_match"]["aggregate"]["value"]
            console.print(f"  the base model alone: exact match {base_score:.2f}")

            _step(6, total, "gate the candidate against production (exit 0: it may ship)")
            evalhub(
                "gate", "--suite", "suite.yaml", "--candidate", "tiny-upper@candidate",
                "--baseline", "tiny-upper@production", "--summary", "gate.md",
                "--output", "gate.json",
            )  # fmt: skip
            runs = json.loads((work / "gate.json").read_text())["runs"][0]
            scores = {
                role: runs[role]["metrics"]["exact_match"]["aggregate"]["value"]
                for role in ("baseline", "candidate")
            }
            if not scores["candidate"] >= 0.8 > scores["baseline"]:
                raise DemoFailed(f"fine-tuning did not help as it should: {scores}")

            _step(7, total, "A/B: 80% of users stay on production, 20% get the candidate")
            evalhub(
                "deploy", "create", "upper-bot", "--backend", "cpu-1",
                "--arm", "control=tiny-upper@production:80",
                "--arm", "candidate=tiny-upper@candidate:20",
            )  # fmt: skip
            split = _traffic(server, "upper-bot", read_jsonl(work / "held-out.jsonl"))
            for arm, versions in sorted(split.items()):
                shown = ", ".join(f"{v} x{n}" for v, n in versions.items())
                console.print(f"  {arm}: {sum(versions.values())} users, served by {shown}")
            evalhub("traffic", "--deployment", "upper-bot", "--limit", "3")
            evalhub("deploy", "rollout", "upper-bot", "start", "--steps", "50,100")
            evalhub("deploy", "rollout", "upper-bot", "step")
            evalhub("alias", "set", "tiny-upper@production", "2", "--reason", "gate passed")

            _step(8, total, "someone pushes the old adapter back; roll back in one call")
            evalhub("alias", "set", "tiny-upper@production", "1", "--reason", "manual push")
            evalhub("alias", "rollback", "tiny-upper@production", "--reason", "it regresses")
            evalhub("alias", "history", "tiny-upper@production")
            evalhub("versions", "lineage", "tiny-upper/2")
        finally:
            os.chdir(cwd)
    console.print(
        f"\n[green]done[/] in {time.perf_counter() - started:.0f} s: exact match on "
        f"{HELD_OUT_EXAMPLES} "
        f"unseen cases went from {base_score:.2f} (base) to {scores['baseline']:.2f} (quick "
        f"adapter) and {scores['candidate']:.2f} (full adapter, now in production).\n"
        f"Look around: EVALHUB_HOME={home / 'home'} evalhub models list\n"
        f"See it all in the dashboard: EVALHUB_HOME={home / 'home'} evalhub dashboard "
        "(then open http://127.0.0.1:8501)"
    )
