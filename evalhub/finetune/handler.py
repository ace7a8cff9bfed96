"""The "fine_tune" job handler: train with the Trainer, report events, register the result.

Checkpoints go to EVALHUB_HOME/jobs/<job id>/; a job whose worker died is claimed again and resumes
from its newest complete checkpoint, ending where an uninterrupted run ends (the trainer restores
optimizer, schedule and RNG state). A cancelled job stops at the next step.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from evalhub import __version__
from evalhub.finetune.config import TrainConfig
from evalhub.finetune.service import checkpoint_model_id
from evalhub.finetune.tables import FineTuneCheckpointRow
from evalhub.finetune.tasks import read_jsonl
from evalhub.jobs.worker import JobContext
from evalhub.platform import Platform
from registry.entities import LineageInput, ModelKind, ModelVersion
from registry.errors import ErrorCode, RegistryError

EXACT_MATCH_EXAMPLES = 100  # held-out examples generated greedily after training
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "evalhub")
MAX_METRIC_EVENTS = 250


def job_dir(platform: Platform, job_id: str) -> Path:
    return platform.settings.home / "jobs" / job_id


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint whose state file was written (it is written last)."""
    from evalhub.finetune.trainer import CHECKPOINTS_DIR, STATE_FILE

    found = [
        path
        for path in (out_dir / CHECKPOINTS_DIR).glob("step-*")
        if (path / STATE_FILE).is_file() and path.name.removeprefix("step-").isdigit()
    ]
    return max(found, key=lambda path: int(path.name.removeprefix("step-")), default=None)


@cache
def code_version() -> str:
    """`git describe` of the source tree when it is a checkout, else the package version."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"evalhub {__version__} ({described})" if described else f"evalhub {__version__}"


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class EventReporter:
    """Turns trainer events into job events (OpenAI's metrics events) and checkpoint rows."""

    def __init__(self, platform: Platform, context: JobContext, total_steps: int) -> None:
        self.platform = platform
        self.context = context
        self.every = max(1, total_steps // MAX_METRIC_EVENTS)
        self.last: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        context = self.context
        if kind == "step":
            self.on_step(event)
        elif kind == "checkpoint":
            self.on_checkpoint(event)
        elif kind == "start":
            verb = "Resumed" if event["step"] else "Started"
            context.event(f"{verb} training at step {event['step']} of {event['total_steps']}")
        elif kind == "data":
            context.event(
                f"{event['split']}: {event['sequences']} sequences, {event['tokens']} tokens"
            )
        elif kind == "warning":
            context.event(event["message"], level="warning")
        context.check_cancelled()

    def on_step(self, event: dict[str, Any]) -> None:
        step, total = event["step"], event["total_steps"]
        self.last = {"step": step, "train_loss": event["loss"]}
        if "val_loss" in event:
            self.last["valid_loss"] = event["val_loss"]
        if step % self.every and step != total and "val_loss" not in event:
            return
        data = {
            "type": "metrics",
            "step": step,
            "total_steps": total,
            "train_loss": event["loss"],
            "learning_rate": event["lr"],
            "epoch": event["epoch"],
            "grad_norm": event["grad_norm"],
            "tokens_per_second": event["tokens_per_second"],
            "peak_memory_bytes": event["peak_memory"],
        }
        message = f"Step {step}/{total}: training loss={event['loss']:.4f}"
        if "val_loss" in event:
            data["valid_loss"] = event["val_loss"]
            message += f", validation loss={event['val_loss']:.4f}"
        self.context.event(message, data=data)

    def on_checkpoint(self, event: dict[str, Any]) -> None:
        job_id, step = self.context.job.id, int(event["step"])
        with Session(self.platform.engine) as session:
            exists = session.exec(
                select(FineTuneCheckpointRow).where(
                    FineTuneCheckpointRow.job_id == job_id, FineTuneCheckpointRow.step == step
                )
            ).first()
            if exists is None:
                session.add(
                    FineTuneCheckpointRow(
                        id=f"ftckpt-{secrets.token_hex(12)}",
                        job_id=job_id,
                        step=step,
                        metrics=self.last,
                        path=event["path"],
                    )
                )
                session.commit()
        model_id = checkpoint_model_id(self.context.job.payload["fine_tuned_model"], step)
        self.context.event(f"Checkpoint saved at step {step}: {model_id}")


def run_fine_tune(context: JobContext, platform: Platform) -> dict[str, Any]:
    """The handler: returns the job result (the `ft:` id and the registered version ref)."""
    import torch

    from evalhub.finetune.trainer import Trainer

    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    job, payload = context.job, context.job.payload
    registry = platform.registry
    config = TrainConfig.model_validate(payload["train_config"])
    base_dir = registry.model_path(payload["base"])
    train = read_jsonl(registry.dataset_path(payload["train_dataset"]))
    val = None
    if payload.get("validation_dataset"):
        val = read_jsonl(registry.dataset_path(payload["validation_dataset"]))
    out_dir = job_dir(platform, job.id)
    resume_from = latest_checkpoint(out_dir) if context.resumed else None
    if resume_from is not None:
        context.event(f"Resuming from checkpoint {resume_from.name}")
    context.check_cancelled()
    reporter = EventReporter(platform, context, payload["total_steps"])
    trainer = Trainer(config, base_dir, out_dir, on_event=reporter, base_model_ref=payload["base"])
    result = trainer.run(train, val, resume_from=resume_from)

    metrics: dict[str, Any] = {
        "train_loss": result.train_loss,
        "steps": result.steps,
        "trained_tokens": result.train_tokens,
        "train_seconds": round(result.seconds, 3),
        "truncated_examples": result.truncated_examples,
    }
    if result.val_loss is not None:
        metrics["valid_loss"] = result.val_loss
    if val:
        from evalhub.finetune.generation import evaluate_exact_match

        context.event("Measuring held-out exact match on the validation file")
        metrics["valid_exact_match"] = evaluate_exact_match(
            result.output_dir, val[:EXACT_MATCH_EXAMPLES], base_model=base_dir
        )
    context.check_cancelled()
    version = register_result(platform, context, result.output_dir, metrics, str(trainer.device))
    context.event(f"Registered {version.ref} as {payload['fine_tuned_model']}")
    return {
        "fine_tuned_model": payload["fine_tuned_model"],
        "version_ref": version.ref,
        "model": version.model,
        "version": version.version,
        "digest": version.digest,
        "trained_tokens": result.train_tokens,
        "metrics": metrics,
    }


def register_result(
    platform: Platform, context: JobContext, directory: Path, metrics: dict[str, Any], device: str
) -> ModelVersion:
    """Register the adapter (or full model) once, even if the job is resumed after this step."""
    job, payload = context.job, context.job.payload
    registry = platform.registry
    name, kind = payload["output_model"], ModelKind(payload["output_kind"])
    try:
        registry.create_model(name, kind, description=f"fine-tuned from {payload['base_name']}")
    except RegistryError as error:
        if error.code is not ErrorCode.ALREADY_EXISTS:
            raise
    for version in registry.search_versions(name, limit=1000).data:
        if version.training_job == job.id:
            return version
    config = payload["train_config"]
    tags = {
        "fine_tuned_model": payload["fine_tuned_model"],
        "device": device,
        **{f"lib.{lib}": version for lib, version in library_versions().items()},
    }
    if payload.get("validation_dataset"):
        tags["validation_dataset"] = payload["validation_dataset"]
    return registry.register_version(
        name,
        directory,
        base=payload["base"] if kind is ModelKind.ADAPTER else None,
        description=f"{config['method']} fine-tune of {payload['base']} by job {job.id}",
        tags=tags,
        source=f"fine_tuning/jobs/{job.id}",
        lineage=LineageInput(
            dataset=payload["train_dataset"],
            training_job=job.id,
            hyperparameters={
                "method": config["method"],
                "method_options": config["method_options"],
                "base": payload["base"],
                "openai": {
                    k: payload["hyperparameters"][k]
                    for k in ("n_epochs", "batch_size", "learning_rate_multiplier")
                },
                "train_config": config,
            },
            seed=payload["seed"],
            code_version=code_version(),
            metrics=metrics,
        ),
        actor=job.created_by,
    )
