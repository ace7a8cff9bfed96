"""The "fine_tune" job handler: train with the Trainer, report events, register the result.

Checkpoints go to EVALHUB_HOME/jobs/<job id>/ and, where checkpoints are stored (a shared artifact
store: see `Settings.store_checkpoints`), each complete one also to the artifact store, its digest
on the checkpoint's row. A job whose worker died is claimed again and resumes from its newest
complete checkpoint, this home's own or, on a worker with another home, fetched from the store and
verified by digest; it ends where an uninterrupted run ends (the trainer restores optimizer,
schedule and RNG state). A cancelled job stops at the next step.

`train` is the one training path: the fine-tuning job registers what it returns, and a
reproduction (evalhub.iteration.reproduce) compares it with what was registered. A job whose
train config asks for `distributed` ranks trains under torchrun (evalhub.finetune.torchrun):
rank 0's events arrive here as they would from the trainer in this process, and cancelling
stops torchrun and its ranks.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from sqlmodel import Session, col, select

from evalhub import __version__
from evalhub.finetune.config import TrainConfig
from evalhub.finetune.service import checkpoint_model_id
from evalhub.finetune.tables import FineTuneCheckpointRow
from evalhub.finetune.tasks import read_jsonl
from evalhub.jobs.worker import JobContext
from evalhub.platform import Platform
from registry.db import writer
from registry.entities import LineageInput, ModelKind, ModelVersion
from registry.errors import ErrorCode, RegistryError

EXACT_MATCH_EXAMPLES = 100  # held-out examples generated greedily after training
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "evalhub")
MAX_METRIC_EVENTS = 250


SCORED_DIR = "scored"


class CheckpointScoring(Protocol):
    """Scores checkpoints on the job's suite (evalhub.iteration.checkpoints implements it)."""

    @property
    def metric(self) -> str: ...

    def score(self, step: int, directory: Path) -> dict[str, Any]: ...

    def best(self, scored: list[dict[str, Any]]) -> dict[str, Any]: ...

    def registered(self, version_ref: str, scored: list[dict[str, Any]], selected: int) -> None: ...


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
    return max(found, key=checkpoint_step, default=None)


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("step-"))


def stored_checkpoints(platform: Platform, job_id: str) -> dict[int, str]:
    """The job's checkpoints in the artifact store: their digests by step."""
    with Session(platform.engine) as session:
        rows = session.exec(
            select(FineTuneCheckpointRow).where(
                FineTuneCheckpointRow.job_id == job_id,
                col(FineTuneCheckpointRow.digest).is_not(None),
            )
        ).all()
    return {row.step: row.digest for row in rows if row.digest}


def resume_point(context: JobContext, platform: Platform, out_dir: Path) -> Path | None:
    """Where a claimed-again job resumes: the newest complete checkpoint of this home, or a newer
    one that a worker elsewhere stored, fetched into this home's cache and verified by digest."""
    if not context.resumed:
        return None
    local = latest_checkpoint(out_dir)
    newer = {
        step: digest
        for step, digest in stored_checkpoints(platform, context.job.id).items()
        if local is None or step > checkpoint_step(local)
    }
    if not newer:
        if local is not None:
            context.event(f"Resuming from checkpoint {local.name}")
        return local
    step = max(newer)
    fetched = platform.registry.artifacts.materialize(newer[step])
    context.event(
        f"Resuming from checkpoint step-{step}, fetched from the artifact store ({newer[step]})"
    )
    return fetched


def saved_checkpoint(platform: Platform, job_id: str, step: int, out_dir: Path) -> Path | None:
    """A checkpoint of the job: this home's own, else fetched from the store; None if neither."""
    from evalhub.finetune.trainer import CHECKPOINTS_DIR, STATE_FILE

    local = out_dir / CHECKPOINTS_DIR / f"step-{step}"
    if (local / STATE_FILE).is_file():
        return local
    digest = stored_checkpoints(platform, job_id).get(step)
    return platform.registry.artifacts.materialize(digest) if digest else None


def model_files(checkpoint: Path, out_dir: Path, step: int) -> Path:
    """The checkpoint without its resume state, hard-linked: what registering it would store."""
    from evalhub.finetune.trainer import STATE_FILE, SUMMARY_FILE

    target = out_dir / SCORED_DIR / f"step-{step}"
    if not target.is_dir():
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(
            checkpoint,
            staging,
            ignore=shutil.ignore_patterns(STATE_FILE, SUMMARY_FILE),
            copy_function=_link,
        )
        staging.rename(target)
    return target


def _link(source: str, destination: str) -> None:
    try:
        Path(destination).hardlink_to(source)
    except OSError:  # another filesystem
        shutil.copy2(source, destination)


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


def environment(device: str, ranks: int = 1) -> dict[str, Any]:
    """What besides the recipe decides the weights: the device, the number of ranks and torch's
    CPU threads (the order of float sums follows both), Python and the libraries."""
    import torch

    return {
        "device": device,
        "ranks": ranks,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "libraries": library_versions(),
    }


class EventReporter:
    """Turns trainer events into job events (OpenAI's metrics events) and checkpoint rows."""

    def __init__(
        self,
        platform: Platform,
        context: JobContext,
        total_steps: int,
        scorer: CheckpointScoring | None = None,
        score_every: int | None = None,
    ) -> None:
        self.platform = platform
        self.context = context
        self.every = max(1, total_steps // MAX_METRIC_EVENTS)
        self.last: dict[str, Any] = {}
        self.scorer = scorer
        self.score_every = score_every

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        context = self.context
        if kind == "step":
            self.on_step(event)
        elif kind == "checkpoint":
            self.on_checkpoint(event)
        elif kind == "start":
            verb = "Resumed" if event["step"] else "Started"
            ranks = event.get("ranks", 1)
            on = f" on {ranks} ranks" if ranks > 1 else ""
            context.event(f"{verb} training at step {event['step']} of {event['total_steps']}{on}")
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
        """Records the checkpoint; where checkpoints are stored, it is in the store before its
        row names its digest, so a row with a digest always names a complete checkpoint."""
        job_id, step, path = self.context.job.id, int(event["step"]), Path(event["path"])
        digest = None
        if self.platform.settings.resolved_store_checkpoints:
            digest = self.platform.registry.artifacts.put_tree(path).digest
        # Read then write: a writer's transaction takes SQLite's lock up front, so a commit by
        # another writer in between (traffic, feedback, a monitor pass) cannot fail the upgrade.
        with Session(writer(self.platform.engine)) as session:
            row = session.exec(
                select(FineTuneCheckpointRow).where(
                    FineTuneCheckpointRow.job_id == job_id, FineTuneCheckpointRow.step == step
                )
            ).first()
            if row is None:
                row = FineTuneCheckpointRow(
                    id=f"ftckpt-{secrets.token_hex(12)}",
                    job_id=job_id,
                    step=step,
                    metrics=self.last,
                    path=str(path),
                )
            row.path, row.digest = str(path), digest or row.digest
            session.add(row)
            session.commit()
        model_id = checkpoint_model_id(self.context.job.payload["fine_tuned_model"], step)
        stored = f", stored as {digest}" if digest else ""
        self.context.event(f"Checkpoint saved at step {step}: {model_id}{stored}")
        if self.scorer is not None and self.score_every and step % self.score_every == 0:
            out_dir = job_dir(self.platform, job_id)
            self.score(step, model_files(path, out_dir, step))

    def score(self, step: int, directory: Path) -> dict[str, Any]:
        """Scores a model on the job's suite; a checkpoint's score is kept on its row."""
        assert self.scorer is not None
        self.context.event(f"Scoring step {step} on the suite")
        entry = self.scorer.score(step, directory)
        job_id = self.context.job.id
        with Session(writer(self.platform.engine)) as session:
            row = session.exec(
                select(FineTuneCheckpointRow).where(
                    FineTuneCheckpointRow.job_id == job_id, FineTuneCheckpointRow.step == step
                )
            ).first()
            if row is not None:
                row.metrics = {**row.metrics, "eval": entry}
                session.add(row)
                session.commit()
        shown = ", ".join(
            f"{name}={value:.4g}" for name, value in entry["metrics"].items() if value is not None
        )
        self.context.event(
            f"Step {step} on the suite: {shown} (eval run {entry['run_id']})",
            data={"type": "checkpoint_eval", **entry},
        )
        self.context.check_cancelled()
        return entry

    def scored(self) -> dict[int, dict[str, Any]]:
        """The checkpoints scored so far, by step (a resumed job keeps its earlier scores)."""
        with Session(self.platform.engine) as session:
            rows = session.exec(
                select(FineTuneCheckpointRow).where(
                    FineTuneCheckpointRow.job_id == self.context.job.id
                )
            ).all()
        return {row.step: row.metrics["eval"] for row in rows if row.metrics.get("eval")}


@dataclass
class Trained:
    """A finished training run: the model files to register (the final model, or the checkpoint
    the suite selected), the job's metrics, and the environment that trained it."""

    directory: Path
    metrics: dict[str, Any]
    environment: dict[str, Any]
    trained_tokens: int
    selection: dict[str, Any] | None = None


def train(
    context: JobContext, platform: Platform, scorer: CheckpointScoring | None = None
) -> Trained:
    """Trains what the job's payload asks (`base`, `train_dataset`, `validation_dataset`,
    `train_config`, `total_steps`, `eval`) into the job's own directory, resuming a claimed-again
    job from its newest checkpoint; with a `scorer` it scores checkpoints and selects the best.
    With `executor` "ray" the training runs on the Ray cluster (see `ray_train`), the rest here."""
    import torch

    from evalhub.finetune.trainer import Trainer

    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    job, payload = context.job, context.job.payload
    registry = platform.registry
    config = TrainConfig.model_validate(payload["train_config"])
    base_dir = registry.model_path(payload["base"])
    train_file = registry.dataset_path(payload["train_dataset"])
    val_file, val = None, None
    if payload.get("validation_dataset"):
        val_file = registry.dataset_path(payload["validation_dataset"])
        val = read_jsonl(val_file)
    out_dir = job_dir(platform, job.id)
    resume_from = resume_point(context, platform, out_dir)
    context.check_cancelled()
    score_every = None
    if scorer is not None:
        score_every = payload["eval"].get("every") or config.checkpoint_every
    reporter = EventReporter(
        platform, context, payload["total_steps"], scorer=scorer, score_every=score_every
    )
    if payload.get("executor") == "ray":
        from evalhub.finetune.ray_train import train_on_ray

        result, trained_in = train_on_ray(
            context, platform.settings.ray_address, config, base_dir, read_jsonl(train_file), val, out_dir,
            resume_from, reporter,
        )  # fmt: skip
    elif config.distributed is not None:
        from evalhub.finetune.ranks import RankConfig
        from evalhub.finetune.torchrun import RUN_DIR, launch

        ranks = config.distributed.nproc_per_node
        context.event(f"Launching torchrun with {ranks} ranks")
        rank_config = RankConfig(
            train_config=config,
            base_model=base_dir,
            base_model_ref=payload["base"],
            out_dir=out_dir,
            train_file=train_file,
            validation_file=val_file,
            resume_from=resume_from,
        )
        result, where = launch(
            rank_config,
            ranks,
            out_dir / RUN_DIR,
            on_event=reporter,
            check_cancelled=context.check_cancelled,
        )
        trained_in = environment(where["device"], where["ranks"])
    else:
        trainer = Trainer(
            config, base_dir, out_dir, on_event=reporter, base_model_ref=payload["base"]
        )
        result = trainer.run(read_jsonl(train_file), val, resume_from=resume_from)
        trained_in = environment(str(trainer.device))

    metrics: dict[str, Any] = {
        "train_loss": result.train_loss,
        "steps": result.steps,
        "trained_tokens": result.train_tokens,
        "train_seconds": round(result.seconds, 3),
        "truncated_examples": result.truncated_examples,
    }
    if result.val_loss is not None:
        metrics["valid_loss"] = result.val_loss
    directory, selection = result.output_dir, None
    if scorer is not None:
        directory, selection = select_checkpoint(
            reporter, scorer, result.output_dir, result.steps, out_dir
        )
        metrics["checkpoint_evals"] = selection["checkpoints"]
        metrics["selected_step"] = selection["selected"]["step"]
        metrics[f"suite_{scorer.metric}"] = selection["selected"]["value"]
    if val:
        from evalhub.finetune.generation import evaluate_exact_match

        context.event("Measuring held-out exact match on the validation file")
        metrics["valid_exact_match"] = evaluate_exact_match(
            directory, val[:EXACT_MATCH_EXAMPLES], base_model=base_dir
        )
    context.check_cancelled()
    return Trained(
        directory=directory,
        metrics=metrics,
        environment=trained_in,
        trained_tokens=result.train_tokens,
        selection=selection,
    )


def run_fine_tune(
    context: JobContext, platform: Platform, scorer: CheckpointScoring | None = None
) -> dict[str, Any]:
    """The handler: returns the job result (the `ft:` id and the registered version ref).

    With a `scorer` (the job asked for checkpoint evaluation) it registers the checkpoint that
    scores best on the suite, which need not be the last.
    """
    payload = context.job.payload
    trained = train(context, platform, scorer)
    version = register_result(
        platform, context, trained.directory, trained.metrics, trained.environment
    )
    if scorer is not None and trained.selection is not None:
        scorer.registered(
            version.ref, trained.selection["checkpoints"], trained.metrics["selected_step"]
        )
    context.event(f"Registered {version.ref} as {payload['fine_tuned_model']}")
    return {
        "fine_tuned_model": payload["fine_tuned_model"],
        "version_ref": version.ref,
        "model": version.model,
        "version": version.version,
        "digest": version.digest,
        "trained_tokens": trained.trained_tokens,
        "metrics": trained.metrics,
        **(trained.selection or {}),
    }


def select_checkpoint(
    reporter: EventReporter,
    scorer: CheckpointScoring,
    final_dir: Path,
    final_step: int,
    out_dir: Path,
) -> tuple[Path, dict[str, Any]]:
    """Scores what is not scored yet (the final model; a checkpoint a dead worker saved but did
    not score), then picks the best: the directory to register and the selection's record.
    A checkpoint that a worker elsewhere saved comes from the artifact store."""
    platform, job_id = reporter.platform, reporter.context.job.id
    scored = reporter.scored()
    every = reporter.score_every or final_step
    for step in range(every, final_step, every):
        if step in scored:
            continue
        checkpoint = saved_checkpoint(platform, job_id, step, out_dir)
        if checkpoint is not None:
            scored[step] = reporter.score(step, model_files(checkpoint, out_dir, step))
    if final_step not in scored:
        scored[final_step] = reporter.score(final_step, final_dir)
    entries = [scored[step] for step in sorted(scored)]
    best = scorer.best(entries)
    step = best["step"]
    directory = final_dir
    if step != final_step:
        directory = out_dir / SCORED_DIR / f"step-{step}"
        if not directory.is_dir():
            checkpoint = saved_checkpoint(platform, job_id, step, out_dir)
            if checkpoint is None:
                raise RuntimeError(
                    f"step {step} scored best, but neither this worker's home nor the artifact "
                    "store holds its checkpoint; set EVALHUB_STORE_CHECKPOINTS=true where "
                    "workers do not share a home"
                )
            directory = model_files(checkpoint, out_dir, step)
    last = entries[-1]["value"]
    reporter.context.event(
        f"Selected step {step} of {final_step} by {scorer.metric} on the suite: "
        f"{best['value']:.4g} (the last step: {last if last is None else format(last, '.4g')})"
    )
    return directory, {"selected": best, "checkpoints": entries}


def register_result(
    platform: Platform,
    context: JobContext,
    directory: Path,
    metrics: dict[str, Any],
    trained_in: dict[str, Any],
) -> ModelVersion:
    """Register the adapter (or full model) once, even if the job is resumed after this step.

    The lineage holds everything a reproduction needs (evalhub.iteration.reproduce): the recipe,
    the dataset's digest, the checkpoint evaluation that selected the step, and the environment.
    Tags repeat the device and libraries for searching, but tags can be edited; the lineage not.
    """
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
        "device": trained_in["device"],
        **{f"lib.{lib}": version for lib, version in trained_in["libraries"].items()},
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
                # A full fine-tune is registered without a base, so the version has no base_digest.
                "base_digest": registry.resolve(payload["base"]).digest,
                "openai": {
                    k: payload["hyperparameters"][k]
                    for k in ("n_epochs", "batch_size", "learning_rate_multiplier")
                },
                "train_config": config,
                "train_dataset_digest": registry.resolve_dataset(payload["train_dataset"]).digest,
                "validation_dataset": payload.get("validation_dataset"),
                "checkpoint_eval": payload.get("eval"),
                "environment": trained_in,
            },
            seed=payload["seed"],
            code_version=code_version(),
            metrics=metrics,
        ),
        actor=job.created_by,
    )
