"""`evalhub demo`: the loop on a tiny model, offline, on CPU, through the same API users call.

Build a base model, register it, fine-tune two LoRA adapters on a task with known answers,
register them with lineage, measure them on held-out cases, move @production, roll back.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evalhub.client import Client
from evalhub.settings import Settings

console = Console()

TRAIN_EXAMPLES = 2000
HELD_OUT_EXAMPLES = 100


def _step(number: int, total: int, text: str) -> None:
    console.print(f"\n[bold cyan]{number}/{total}[/] {text}")


def _train(
    base_dir: Path, base_ref: str, out_dir: Path, train: list[dict[str, Any]], steps: int, seed: int
) -> tuple[Path, dict[str, Any]]:
    from evalhub.finetune.config import TrainConfig
    from evalhub.finetune.trainer import Trainer

    config = TrainConfig(
        method="lora",
        method_options={"rank": 16},
        max_steps=steps,
        batch_size=16,
        learning_rate=3e-3,
        seed=seed,
    )
    losses: list[float] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "step" and event.get("loss") is not None:
            losses.append(float(event["loss"]))

    started = time.perf_counter()
    result = Trainer(config, base_dir, out_dir, on_event=on_event, base_model_ref=base_ref).run(
        train
    )
    hyperparameters = {
        "method": "lora",
        "rank": 16,
        "steps": steps,
        "batch_size": 16,
        "learning_rate": 3e-3,
    }
    summary = {
        "hyperparameters": hyperparameters,
        "seconds": round(time.perf_counter() - started, 1),
        "final_loss": round(losses[-1], 4) if losses else None,
    }
    return Path(result.output_dir), summary


def _quiet_libraries() -> None:
    """The demo prints its own progress; library progress bars and deprecations are noise here."""
    import warnings

    from transformers.utils import logging as transformers_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def run_demo(home: Path, *, fresh: bool = True) -> None:
    import torch

    from evalhub import __version__
    from evalhub.cli.registry import register_directory
    from evalhub.finetune.generation import evaluate_exact_match
    from evalhub.finetune.tasks import upper_case_task, write_jsonl
    from evalhub.finetune.tiny import build_tiny_model

    torch.set_num_threads(1)
    _quiet_libraries()
    home = home.resolve()
    if fresh and home.exists():
        shutil.rmtree(home)
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home, url=None, database_url=None, _env_file=None)
    total = 6
    console.print(f"[bold]evalhub demo[/] in {home} (SQLite, local artifact store, CPU, offline)")

    with Client.connect(settings) as client:
        _step(1, total, "build a tiny Llama base model offline and register it")
        started = time.perf_counter()
        base_dir = build_tiny_model(work / "tiny-base", seed=0)
        client.post("/models", {"name": "tiny", "kind": "base", "description": "tiny Llama"})
        base = register_directory(client, base_dir, "tiny", description="demo base")
        console.print(
            f"  registered [bold]{base['ref']}[/]: {base['parameter_count']:,} parameters, "
            f"{base['digest'][:19]}… ({time.perf_counter() - started:.0f} s)"
        )

        _step(2, total, "store the training data as content-addressed dataset versions")
        train = upper_case_task(TRAIN_EXAMPLES, seed=0, split="train")
        held_out = upper_case_task(HELD_OUT_EXAMPLES, seed=0, split="held_out")
        train_file = write_jsonl(work / "upper-train.jsonl", train)
        write_jsonl(work / "upper-heldout.jsonl", held_out)
        dataset = client.upload(
            "/datasets/upper/versions", train_file, {"format": "chat", "create": "true"}
        )["version"]
        console.print(
            f"  [bold]{dataset['ref']}[/]: {dataset['row_count']} examples like "
            f"'{train[0]['messages'][0]['content']}' -> '{train[0]['messages'][1]['content']}'"
        )

        _step(3, total, f"baseline: the base model on {HELD_OUT_EXAMPLES} unseen held-out cases")
        baseline = evaluate_exact_match(base_dir, held_out)
        console.print(f"  tiny/1 exact match: [bold]{baseline:.2f}[/]")

        _step(4, total, "fine-tune two LoRA adapters and register them with lineage")
        client.post("/models", {"name": "tiny-upper", "kind": "adapter"})
        scores: dict[int, float] = {}
        for steps, seed in ((200, 0), (30, 1)):
            adapter_dir, summary = _train(
                base_dir, base["ref"], work / f"run-{steps}", train, steps, seed
            )
            score = evaluate_exact_match(adapter_dir, held_out, base_model=base_dir)
            lineage = {
                "dataset": dataset["ref"],
                "training_job": f"demo-{steps}-steps",
                "hyperparameters": summary["hyperparameters"],
                "seed": seed,
                "code_version": __version__,
                "metrics": {"exact_match": score, "train_loss": summary["final_loss"]},
            }
            version = register_directory(
                client, adapter_dir, "tiny-upper", base=base["ref"], lineage=lineage
            )
            scores[version["version"]] = score
            console.print(
                f"  [bold]{version['ref']}[/]: {steps} steps in {summary['seconds']} s, "
                f"loss {summary['final_loss']}, held-out exact match [bold]{score:.2f}[/]"
            )

        _step(5, total, "@production gets the better adapter; the weaker one is a candidate")
        best = max(scores, key=scores.__getitem__)
        other = min(scores, key=scores.__getitem__)
        client.put(
            "/models/tiny-upper/aliases/production",
            {"version": best, "reason": f"exact match {scores[best]:.2f}"},
        )
        client.put("/models/tiny-upper/aliases/candidate", {"version": other})
        verdict = "promote" if scores[other] >= scores[best] else "hold: it regresses"
        console.print(
            f"  candidate tiny-upper/{other} {scores[other]:.2f} vs production "
            f"tiny-upper/{best} {scores[best]:.2f}: {verdict}"
        )

        _step(6, total, "someone promotes the candidate anyway; roll back in one call")
        client.put(
            "/models/tiny-upper/aliases/production", {"version": other, "reason": "manual push"}
        )
        client.post(
            "/models/tiny-upper/aliases/production/rollback", {"reason": "exact match dropped"}
        )
        now = client.get("/resolve", ref="tiny-upper@production")
        console.print(f"  tiny-upper@production is [bold]{now['ref']}[/] again")
        history = client.get("/models/tiny-upper/aliases/production/history")["data"]
        table = Table(title="tiny-upper@production history")
        for column in ("when", "action", "from", "to", "who", "reason"):
            table.add_column(column)
        for move in history:
            table.add_row(
                move["created_at"][11:19],
                move["action"],
                str(move["from_version"] or "-"),
                str(move["to_version"] or "-"),
                move["actor"],
                move["reason"],
            )
        console.print(table)
        lineage = client.get(f"/models/tiny-upper/versions/{best}/lineage")
        console.print(
            f"  lineage of {lineage['version']['ref']}: base {lineage['base']['ref']}, "
            f"dataset {lineage['dataset']['ref']}, job {lineage['version']['training_job']}"
        )
    console.print(
        f"\n[green]done.[/] Look around: EVALHUB_HOME={home} evalhub models list | "
        "evalhub alias history tiny-upper@production"
    )
