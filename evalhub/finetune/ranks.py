"""One rank of a distributed fine-tuning run: `python -m evalhub.finetune.ranks RANK_CONFIG.json`.

`train_rank` is the per-rank training function: it reads the run's RankConfig and trains with the
same Trainer as a single process, assuming torch.distributed is initialised by whoever started
the ranks (`main` below, under torchrun; Ray Train's workers run `ray_train.train_rank`). Rank 0
reports its events, ending with a `result` event, to a callback or as JSON lines appended to the
config's events file, which the job handler tails (see `evalhub.finetune.torchrun`).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evalhub.finetune.config import TrainConfig
from evalhub.finetune.tasks import read_jsonl
from evalhub.finetune.trainer import EventCallback, Trainer, TrainResult

RESULT_EVENT = "result"


class RankConfig(BaseModel):
    """What every rank of a run reads: the recipe, its inputs, and where rank 0 writes."""

    model_config = ConfigDict(extra="forbid")

    train_config: TrainConfig
    base_model: Path = Field(description="The base model directory.")
    base_model_ref: str = Field(description="What adapter_config.json names as the base.")
    out_dir: Path = Field(description="Checkpoints and the final model go here.")
    train_file: Path = Field(description="Chat JSONL training examples.")
    validation_file: Path | None = None
    resume_from: Path | None = Field(default=None, description="A checkpoint to continue from.")
    events_file: Path | None = Field(
        default=None, description="Rank 0 appends its events here as JSON lines."
    )
    launcher_pid: int | None = Field(
        default=None,
        description="The process that launched the run: the ranks stop when it is gone, so a "
        "killed worker leaves no run writing into a job another worker resumes.",
    )


class LauncherGone(RuntimeError):
    """The launching process (or the rank's parent, torchrun) exited: stop training."""


def result_event(result: TrainResult, trainer: Trainer) -> dict[str, Any]:
    """The run's result as rank 0 reports it last (paths as strings)."""
    values = asdict(result)
    values["output_dir"] = str(result.output_dir)
    values["checkpoints"] = [str(path) for path in result.checkpoints]
    return {
        "type": RESULT_EVENT,
        **values,
        "device": str(trainer.device),
        "ranks": trainer.world.size,
    }


def result_from_event(event: dict[str, Any]) -> TrainResult:
    names = TrainResult.__dataclass_fields__
    values = {key: value for key, value in event.items() if key in names}
    values["output_dir"] = Path(values["output_dir"])
    values["checkpoints"] = [Path(path) for path in values["checkpoints"]]
    return TrainResult(**values)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def train_rank(config_path: Path | str, on_event: EventCallback | None = None) -> TrainResult:
    """Trains this rank's share of the run described by the RankConfig at `config_path`.

    torch.distributed must be initialised already. Every rank returns the result; rank 0
    writes the files and reports events (to `on_event`, or else to the config's events file).
    """
    import torch

    from evalhub.finetune.parallel import World

    config = RankConfig.model_validate_json(Path(config_path).read_text())
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    world = World.current()
    sink = on_event
    if sink is None and config.events_file is not None:
        sink = _appender(config.events_file)
    parent = os.getppid()

    def report(event: dict[str, Any]) -> None:
        if os.getppid() != parent or (
            config.launcher_pid is not None and not _alive(config.launcher_pid)
        ):
            raise LauncherGone("the process that launched this run is gone; stopping")
        if world.main and sink is not None:
            sink(event)

    trainer = Trainer(
        config.train_config,
        config.base_model,
        config.out_dir,
        on_event=report,
        base_model_ref=config.base_model_ref,
    )
    train_rows = read_jsonl(config.train_file)
    val_rows = read_jsonl(config.validation_file) if config.validation_file else None
    result = trainer.run(train_rows, val_rows, resume_from=config.resume_from)
    if world.main and sink is not None:
        sink(result_event(result, trainer))
    return result


def _appender(path: Path) -> EventCallback:
    """Appends each event as one JSON line, flushed, so a reader never waits on a buffer."""

    def append(event: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(event) + "\n")

    return append


def main(argv: list[str] | None = None) -> int:
    """A rank under torchrun: join the process group (NCCL on a GPU, else gloo), train, leave."""
    import torch
    import torch.distributed as dist
    from torch.distributed.elastic.multiprocessing.errors import record

    from evalhub.finetune.parallel import backend, default_device

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m evalhub.finetune.ranks RANK_CONFIG.json", file=sys.stderr)
        return 2
    config = RankConfig.model_validate_json(Path(args[0]).read_text())
    device = default_device(config.train_config.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend(device))
    record(train_rank)(args[0])  # torchrun's summary then shows a failing rank's error
    # The ranks leave together: rank 1 tearing its gloo group down while rank 0 still wrote the
    # model aborted a run ("terminate called without an active exception", a busy 2-core
    # machine). After an error there is no teardown: torchrun stops the other ranks, and a
    # barrier could only wait for them.
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
