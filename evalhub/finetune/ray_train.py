"""Fine-tuning on a Ray cluster: Ray Train's TorchTrainer runs `train_rank` on each of its workers.

The handler (`handler.train`) stays in charge: it ships the base model, the data and the
checkpoint to resume from through Ray's object store, and receives what rank 0 reports as the
local run would have it: the trainer's events, checkpoint directories written under the job's own
directory (so a requeued job resumes from them, on Ray or not), and the final model files, which
it then registers as always.

TorchTrainer runs one worker, or one per rank of the job's `distributed.nproc_per_node`: its
workers are the ranks of the process group it initialises, and `Trainer` shares each batch and
the gradients across them (DDP for adapters, FSDP for full fine-tuning) as under torchrun; rank 0
reports.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evalhub.finetune.config import TrainConfig
from evalhub.finetune.trainer import CHECKPOINTS_DIR, FINAL_DIR, TrainResult
from evalhub.jobs.ray_executor import (
    Event,
    connected,
    drive,
    new_channel,
    pack_directory,
    report,
    unpack_directory,
)
from evalhub.jobs.worker import JobContext, JobFailed


class RayRunFailed(JobFailed):
    """The Ray run ended with an error on a Ray Train worker or its controller."""


def train_on_ray(
    context: JobContext,
    address: str | None,
    config: TrainConfig,
    base_dir: Path,
    train_rows: Sequence[dict[str, Any]],
    val_rows: Sequence[dict[str, Any]] | None,
    out_dir: Path,
    resume_from: Path | None,
    on_event: Callable[[Event], None],
) -> tuple[TrainResult, dict[str, Any]]:
    """Runs the job's training on the cluster at `address`; returns what `Trainer.run` would
    (its directories under `out_dir`) and the environment that trained it (a Ray worker's)."""
    with connected(address) as ray:
        from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
        from ray.train.torch import TorchTrainer

        channel = new_channel(ray)
        resume = None
        if resume_from is not None:
            resume = {"name": resume_from.name, "files": ray.put(pack_directory(resume_from))}
        loop_config = {
            "channel": channel,
            "train_config": config.model_dump(mode="json"),
            "base_model_ref": context.job.payload["base"],
            "base_files": ray.put(pack_directory(base_dir)),
            "train_rows": ray.put(list(train_rows)),
            "val_rows": ray.put(list(val_rows or [])),
            "resume": resume,
        }
        use_gpu = config.device in (None, "cuda") and ray.cluster_resources().get("GPU", 0) >= 1
        workers = config.distributed.nproc_per_node if config.distributed else 1
        device = "GPU" if use_gpu else "CPU"
        has = int(ray.cluster_resources().get(device, 0))
        if workers > has:  # Ray would wait for them without end
            raise RayRunFailed(
                f"{workers} Ray Train workers need {workers} {device}s; the cluster at {address} "
                f"has {has}"
            )
        trainer = TorchTrainer(
            train_rank,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            # Retries are the evalhub job's (a requeued job resumes from its checkpoints).
            run_config=RunConfig(
                name=f"{context.job.id}-attempt-{context.job.attempts}",
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        context.event(
            f"Running on the Ray cluster at {address}: Ray Train TorchTrainer, "
            f"{workers} {device} worker{'s' if workers > 1 else ''}"
        )
        received = Received(context, out_dir, on_event)
        try:
            drive(context, channel, trainer.fit, received)
        except TrainingFailedError as error:
            raise RayRunFailed(failure_message(error)) from None
    if received.result is None:
        raise RayRunFailed("the Ray run ended without sending its trained model")
    return received.result, received.environment


def failure_message(error: Exception) -> str:
    """A failed run's own errors: each failing rank's (ray.train.WorkerGroupError), else Ray's."""
    failures: dict[int, Exception] = getattr(error, "worker_failures", None) or {}
    if not failures:
        return f"{type(error).__name__}: {error}"
    return "; ".join(
        f"Ray Train worker {rank}: {type(failure).__name__}: {failure}"
        for rank, failure in sorted(failures.items())
    )


class Received:
    """What rank 0 reports, turned into what the local run makes: the trainer's events go to
    `on_event`, checkpoints and the final model are written under `out_dir`."""

    def __init__(
        self, context: JobContext, out_dir: Path, on_event: Callable[[Event], None]
    ) -> None:
        self.context = context
        self.out_dir = out_dir
        self.on_event = on_event
        self.result: TrainResult | None = None
        self.environment: dict[str, Any] = {}

    def __call__(self, event: Event) -> None:
        kind = event["type"]
        if kind == "ray_worker":
            self.context.event(
                f"Ray Train worker {event['rank']} of {event['world_size']} started on node "
                f"{event['node_ip']} (pid {event['pid']})",
                data=event,
            )
        elif kind == "checkpoint":
            directory = self.out_dir / CHECKPOINTS_DIR / f"step-{event['step']}"
            path = unpack_directory(event["files"], directory)
            trainer_event = {key: value for key, value in event.items() if key != "files"}
            self.on_event({**trainer_event, "path": str(path)})
        elif kind == "result":
            fields = {key: value for key, value in event.items() if key != "type"}
            final = unpack_directory(fields.pop("files"), self.out_dir / FINAL_DIR)
            self.environment = fields.pop("environment")
            checkpoints = [self.out_dir / CHECKPOINTS_DIR / name for name in fields["checkpoints"]]
            self.result = TrainResult(**{**fields, "output_dir": final, "checkpoints": checkpoints})
        else:
            self.on_event(event)


def train_rank(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: unpack the base (and the checkpoint to resume from) into
    a scratch directory, train with `Trainer`, report its events, checkpoints and final model."""
    import ray
    import ray.train
    import torch

    from evalhub.finetune.handler import environment
    from evalhub.finetune.trainer import Trainer

    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    train_context = ray.train.get_context()
    rank = train_context.get_world_rank()
    channel = loop_config["channel"]

    def send(event: Event) -> None:
        if rank == 0:
            report(channel, event)

    node_id = ray.get_runtime_context().get_node_id()
    send(
        {
            "type": "ray_worker",
            "rank": rank,
            "world_size": train_context.get_world_size(),
            "node_id": node_id,
            "node_ip": next(
                node["NodeManagerAddress"] for node in ray.nodes() if node["NodeID"] == node_id
            ),
            "pid": os.getpid(),
        }
    )

    def on_event(event: Event) -> None:
        if rank != 0:
            return
        if event["type"] == "checkpoint":
            event = {**event, "files": pack_directory(Path(event["path"]))}
        send(event)

    with tempfile.TemporaryDirectory(prefix="evalhub-ray-") as scratch:
        root = Path(scratch)
        base_dir = unpack_directory(ray.get(loop_config["base_files"]), root / "base")
        out_dir = root / "out"
        resume_from = None
        if loop_config["resume"] is not None:
            resume = loop_config["resume"]
            resume_from = unpack_directory(
                ray.get(resume["files"]), out_dir / CHECKPOINTS_DIR / resume["name"]
            )
        trainer = Trainer(
            TrainConfig.model_validate(loop_config["train_config"]),
            base_dir,
            out_dir,
            on_event=on_event,
            base_model_ref=loop_config["base_model_ref"],
        )
        result = trainer.run(
            ray.get(loop_config["train_rows"]),
            ray.get(loop_config["val_rows"]),
            resume_from=resume_from,
        )
        if rank != 0:
            return
        send(
            {
                "type": "result",
                "output_kind": result.output_kind,
                "steps": result.steps,
                "train_loss": result.train_loss,
                "val_loss": result.val_loss,
                "train_tokens": result.train_tokens,
                "seconds": result.seconds,
                "truncated_examples": result.truncated_examples,
                "checkpoints": [path.name for path in result.checkpoints],
                "files": pack_directory(result.output_dir),
                "environment": environment(str(trainer.device), train_context.get_world_size()),
            }
        )
