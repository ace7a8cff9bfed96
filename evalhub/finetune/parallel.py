"""The ranks of a distributed run as the trainer sees them (imports torch: used while training).

Whoever starts the processes initialises torch.distributed (torchrun through
`evalhub.finetune.ranks`, or Ray Train); the trainer then asks `World.current()` where it stands.
Every rank builds the same global batch, trains on its strided share of the rows (as
DistributedSampler deals them out) and weights each token's loss by the global token count, so
the summed gradients are the ones one process computes on the whole batch. Adapter methods train
under DDP (every rank holds the frozen base); full fine-tuning under FSDP (`fully_shard`, which
shards parameters, gradients and optimizer state, and runs on CPU with gloo too).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

Strategy = Literal["ddp", "fsdp"]
Batch = dict[str, torch.Tensor]


def strategy_for(output: str) -> Strategy:
    """DDP for adapters (small gradients, a replicated frozen base); FSDP for whole models."""
    return "ddp" if output == "adapter" else "fsdp"


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> World:
        """This process's place in the initialised process group; one rank of one without it."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(
            rank=dist.get_rank(),
            size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0 reports events and writes files."""
        return self.rank == 0

    def share(self, batch: Batch) -> Batch | None:
        """This rank's rows of a global batch (rank, rank + size, ...); None when it has none."""
        if self.rank >= batch["input_ids"].shape[0]:
            return None
        return {key: value[self.rank :: self.size] for key, value in batch.items()}

    def sum(self, *values: float) -> list[float]:
        """The values summed over the ranks (float64, so token counts stay exact)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def collective_device(self) -> torch.device:
        """NCCL reduces CUDA tensors only; gloo CPU ones."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def default_device(name: str | None) -> torch.device:
    """The device a run asks for, else CUDA when there is a GPU, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def wrap(model: Any, strategy: Strategy, device: torch.device) -> Any:
    """The model for training on every rank: DDP around it, or sharded in place by FSDP."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # No buffer changes in training (no batch norm): rotary tables need no sync per step.
            forward_sync_buffers=False,
        )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # One FSDP unit per transformer block (what the model says must not be split), then the
    # rest (embeddings, norm, head) in the root unit.
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def unwrap(model: Any) -> Any:
    """The model itself (the PEFT model, or the FSDP-sharded transformers model)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


@contextmanager
def gradient_sync(model: Any, enabled: bool) -> Iterator[None]:
    """Reduce gradients only after the last micro-batch of a step (accumulation is local)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        with nullcontext() if enabled else model.no_sync():
            yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(enabled)
        yield
    else:
        yield


def is_sharded(model: Any) -> bool:
    """Whether FSDP sharded the model (`fully_shard` gives it these methods)."""
    return hasattr(model, "set_requires_gradient_sync")


def full_model_state(model: Any) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU, gathered from the shards (every rank must call)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    return {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}


def full_optimizer_state(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state of the whole model, gathered (every rank must call)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_full_optimizer_state(
    model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Each rank keeps its shard of a gathered optimizer state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, state, options=options)
