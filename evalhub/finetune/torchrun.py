"""Launching a distributed fine-tuning run under torchrun and following it from the job handler.

`launch` writes the run's RankConfig into the job's directory, starts
`python -m torch.distributed.run --nproc_per_node N ... -m evalhub.finetune.ranks CONFIG` in a
session of its own, hands each event that rank 0 appends to the events file to the caller, and
returns rank 0's result. Cancelling (the caller's check raises) or any error terminates torchrun,
which stops its ranks; torchrun's output is kept in `torchrun.log` and its tail is in the error
when the run fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evalhub.finetune.ranks import RESULT_EVENT, RankConfig, result_from_event
from evalhub.finetune.trainer import EventCallback, TrainResult

RUN_DIR = "torchrun"
STOP_SECONDS = 30.0
LOG_TAIL_CHARS = 3000


class DistributedRunError(RuntimeError):
    """torchrun failed or ended without a result; the message holds the tail of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_devices(nproc_per_node: int, device: str | None) -> None:
    """One rank per GPU: refuse more ranks than this machine has GPUs (CPU ranks are free)."""
    import torch

    from evalhub.finetune.parallel import default_device

    if default_device(device).type != "cuda":
        return
    gpus = torch.cuda.device_count()
    if nproc_per_node > gpus:
        raise DistributedRunError(
            f"distributed.nproc_per_node is {nproc_per_node} but this machine has {gpus} GPU(s): "
            "run one rank per GPU (or set device 'cpu' to run gloo ranks on the CPU)"
        )


def command(config_path: Path, nproc_per_node: int, port: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", str(nproc_per_node),
        "--master_addr", "127.0.0.1",
        "--master_port", str(port),
        "-m", "evalhub.finetune.ranks", str(config_path),
    ]  # fmt: skip


def launch(
    config: RankConfig,
    nproc_per_node: int,
    work_dir: Path,
    *,
    on_event: EventCallback,
    check_cancelled: Callable[[], None],
    poll_seconds: float = 0.2,
) -> tuple[TrainResult, dict[str, Any]]:
    """Runs `config` on `nproc_per_node` ranks of this machine; returns the result and where it
    ran (device, ranks). `check_cancelled` is called between polls and may raise to stop it."""
    check_devices(nproc_per_node, config.train_config.device)
    work_dir.mkdir(parents=True, exist_ok=True)
    events_file = work_dir / "events.jsonl"
    events_file.unlink(missing_ok=True)  # a resumed job's earlier launch left its own
    events_file.touch()
    config = config.model_copy(update={"events_file": events_file, "launcher_pid": os.getpid()})
    config_path = work_dir / "rank_config.json"
    config_path.write_text(config.model_dump_json(indent=2))
    log_path = work_dir / "torchrun.log"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result: dict[str, Any] | None = None
    with log_path.open("w") as log, events_file.open(encoding="utf-8") as events:
        process = subprocess.Popen(
            command(config_path, nproc_per_node, free_port()),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped as one
        )
        try:
            pending = ""
            while True:
                finished = process.poll() is not None
                pending += events.read()
                *lines, pending = pending.split("\n")
                for line in lines:
                    event = json.loads(line)
                    if event["type"] == RESULT_EVENT:
                        result = event
                    else:
                        on_event(event)
                if finished:
                    break
                check_cancelled()
                time.sleep(poll_seconds)
        finally:
            stop(process)
    if process.returncode != 0 or result is None:
        tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        state = f"exited with code {process.returncode}" if process.returncode else "ended"
        raise DistributedRunError(
            f"torchrun ({nproc_per_node} ranks) {state} without a result; the end of "
            f"{log_path}:\n{tail}"
        )
    where = {"device": result["device"], "ranks": result["ranks"]}
    return result_from_event(result), where


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to torchrun's process group (torchrun stops its ranks), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()
