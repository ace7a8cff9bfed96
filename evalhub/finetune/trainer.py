"""The fine-tuning run: load the base, apply the method, train, evaluate, checkpoint, save.

`Trainer.run` owns the order of the steps; each step is a method a subclass may replace (the job
worker adds registration on top). Everything that decides the numbers (data order, adapter
initialisation, dropout) is seeded, so on CPU the same config and data give bit-identical weights,
and a run resumed from a checkpoint ends where the uninterrupted run ends.

When torch.distributed is initialised (torchrun through `evalhub.finetune.ranks`, or Ray Train),
every rank runs the same Trainer: each trains on its share of every global batch under DDP
(adapters) or FSDP (full fine-tuning), and rank 0 alone writes checkpoints and the final model
(see `evalhub.finetune.parallel`). Every rank emits its events; the caller keeps rank 0's.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from evalhub.finetune.batching import collate
from evalhub.finetune.config import TrainConfig
from evalhub.finetune.methods import get_method
from evalhub.finetune.parallel import (
    World,
    default_device,
    full_model_state,
    full_optimizer_state,
    gradient_sync,
    is_sharded,
    load_full_optimizer_state,
    strategy_for,
    unwrap,
    wrap,
)
from evalhub.finetune.tokenize import IGNORE_INDEX, TokenizedExample, pack, tokenize_dataset

EventCallback = Callable[[dict[str, Any]], None]
STATE_FILE = "trainer_state.pt"
SUMMARY_FILE = "trainer_state.json"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"


@dataclass
class TrainResult:
    output_dir: Path
    output_kind: str
    steps: int
    train_loss: float | None
    val_loss: float | None
    train_tokens: int
    seconds: float
    checkpoints: list[Path] = field(default_factory=list)
    truncated_examples: int = 0


def lr_factor(scheduler: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak rate after `step` completed steps: linear warm-up, then decay."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if scheduler == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return factor


def peak_memory_bytes(device: torch.device) -> int:
    """Peak accelerator memory on CUDA; peak resident memory of the process elsewhere."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def label_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry loss after the causal shift (what the model's mean loss divides by)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


class Trainer:
    """One fine-tuning run of `config` on the base model directory `base_model` into `out_dir`."""

    def __init__(
        self,
        config: TrainConfig,
        base_model: Path,
        out_dir: Path,
        *,
        on_event: EventCallback | None = None,
        base_model_ref: str | None = None,
    ) -> None:
        self.config = config
        self.base_model = Path(base_model)
        self.out_dir = Path(out_dir)
        self.on_event = on_event
        # What adapter_config.json names as its base: a registry reference such as "tiny/1".
        self.base_model_ref = base_model_ref or str(self.base_model)
        self.method = get_method(config.method)
        self.truncated_examples = 0
        self.options = self.method.parse_options(config.method_options)
        self.world = World.current()
        device = default_device(config.device)
        if device.type == "cuda" and device.index is None and self.world.distributed:
            device = torch.device("cuda", self.world.local_rank)  # one GPU per rank
        self.device = device

    # -- the algorithm -------------------------------------------------------------------------

    def run(
        self,
        train_examples: Sequence[dict[str, Any]],
        val_examples: Sequence[dict[str, Any]] | None = None,
        *,
        resume_from: Path | None = None,
    ) -> TrainResult:
        started = time.perf_counter()
        config = self.config
        torch.manual_seed(config.seed)
        tokenizer = self.load_tokenizer()
        train = self.prepare_data(tokenizer, train_examples, "train")
        val = self.prepare_data(tokenizer, val_examples or [], "validation")
        if not train:
            raise ValueError("no training examples left after tokenisation")
        model = self.apply_method(self.load_model(resume_from))
        if resume_from is not None and self.method.output == "adapter":
            self.load_adapter_weights(model, Path(resume_from))
        model = self.distribute(model)
        optimizer = self.build_optimizer(model)
        total_steps = self.total_steps(len(train))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lr_factor(config.scheduler, round(config.warmup_ratio * total_steps), total_steps),
        )
        step = 0
        if resume_from is not None:
            step = self.restore_state(Path(resume_from), model, optimizer, scheduler)
        self.emit(
            {"type": "start", "step": step, "total_steps": total_steps, "ranks": self.world.size}
        )

        checkpoints: list[Path] = []
        train_loss: float | None = None
        val_loss: float | None = None
        train_tokens = 0
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        while step < total_steps:
            step_started = time.perf_counter()
            batches = [
                collate(self.micro_batch(train, index), pad_id)
                for index in range(step * config.grad_accum, (step + 1) * config.grad_accum)
            ]
            learning_rate = optimizer.param_groups[0]["lr"]  # the rate this step uses
            train_loss, tokens = self.train_step(model, batches)
            grad_norm = self.clip_gradients(model)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_tokens += tokens
            elapsed = time.perf_counter() - step_started
            event: dict[str, Any] = {
                "type": "step",
                "step": step,
                "total_steps": total_steps,
                "epoch": step * config.grad_accum / math.ceil(len(train) / config.batch_size),
                "loss": train_loss,
                "lr": learning_rate,
                "grad_norm": grad_norm,
                "tokens_per_second": tokens / elapsed if elapsed > 0 else None,
                "peak_memory": peak_memory_bytes(self.device),
            }
            if val and config.eval_every and (step % config.eval_every == 0 or step == total_steps):
                val_loss = self.evaluate_loss(model, val, pad_id)
                event["val_loss"] = val_loss
            self.emit(event)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                path = self.save_checkpoint(model, tokenizer, optimizer, scheduler, step)
                checkpoints.append(path)
                self.emit({"type": "checkpoint", "step": step, "path": str(path)})

        if val and val_loss is None:
            val_loss = self.evaluate_loss(model, val, pad_id)
        final_dir = self.out_dir / FINAL_DIR
        self.save_model(model, tokenizer, final_dir)
        result = TrainResult(
            output_dir=final_dir,
            output_kind=self.method.output,
            steps=step,
            train_loss=train_loss,
            val_loss=val_loss,
            train_tokens=train_tokens,
            seconds=time.perf_counter() - started,
            checkpoints=checkpoints,
            truncated_examples=self.truncated_examples,
        )
        self.emit({"type": "done", "step": step, "path": str(final_dir), "val_loss": val_loss})
        return result

    # -- steps a subclass may replace ------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def load_tokenizer(self) -> Any:
        from evalhub.finetune.loading import load_tokenizer

        return load_tokenizer(self.base_model)

    def prepare_data(
        self, tokenizer: Any, examples: Sequence[dict[str, Any]], split: str
    ) -> list[TokenizedExample]:
        """Tokenise with assistant-only labels; long examples are reported, never cut silently."""
        config = self.config
        data = tokenize_dataset(tokenizer, examples, config.max_seq_len, config.on_overflow)
        if split == "train":
            self.truncated_examples = len(data.truncated_indices)
        if data.truncated_indices or data.dropped_indices:
            self.emit(
                {
                    "type": "warning",
                    "split": split,
                    "message": (
                        f"{len(data.truncated_indices)} truncated and {len(data.dropped_indices)} "
                        f"dropped {split} examples longer than max_seq_len={config.max_seq_len}"
                    ),
                    "truncated": data.truncated_indices,
                    "dropped": data.dropped_indices,
                }
            )
        examples_out = data.examples
        if config.packing and split == "train":
            examples_out = pack(examples_out, config.max_seq_len)
        self.emit(
            {
                "type": "data",
                "split": split,
                "sequences": len(examples_out),
                "tokens": sum(example.n_tokens for example in examples_out),
            }
        )
        return examples_out

    def load_model(self, resume_from: Path | None) -> Any:
        """The base in float32; a full-model method resumes from its checkpoint's weights."""
        from transformers import AutoModelForCausalLM

        source = self.base_model
        if resume_from is not None and self.method.output == "model":
            source = Path(resume_from)
        extra = self.method.load_kwargs(self.options) if self.method.load_kwargs else {}
        if "device_map" in extra and self.device.type == "cuda":
            extra["device_map"] = {"": self.device.index or 0}  # this rank's GPU
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32, **extra)
        if getattr(model, "hf_quantizer", None) is None:
            model = model.to(self.device)
        if self.config.gradient_checkpointing:
            self.enable_checkpointing(model)
        return model

    @staticmethod
    def enable_checkpointing(model: Any) -> None:
        """Recompute activations in backward (transformers 5 renamed it; the old name warns)."""
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def apply_method(self, model: Any) -> Any:
        model = self.method.apply(model, self.options)
        model.train()
        return model

    def distribute(self, model: Any) -> Any:
        """DDP around an adapter model, FSDP shards of a full one; the model itself on one rank."""
        if not self.world.distributed:
            return model
        if self.method.make_optimizer is not None:
            raise ValueError(
                f"method {self.method.name!r} cannot train on several ranks: its optimizer works "
                "on whole weight matrices"
            )
        return wrap(model, strategy_for(self.method.output), self.device)

    def build_optimizer(self, model: Any) -> torch.optim.Optimizer:
        config = self.config
        if self.method.make_optimizer is not None:
            return self.method.make_optimizer(
                model, self.options, lr=config.learning_rate, weight_decay=config.weight_decay
            )
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        return torch.optim.AdamW(
            parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )

    def total_steps(self, n_sequences: int) -> int:
        if self.config.max_steps is not None:
            return self.config.max_steps
        micro_batches = math.ceil(n_sequences / self.config.batch_size) * self.config.epochs
        return math.ceil(micro_batches / self.config.grad_accum)

    def micro_batch(self, data: list[TokenizedExample], index: int) -> list[TokenizedExample]:
        """The index-th micro-batch of an endless stream of seeded epoch permutations."""
        size = self.config.batch_size
        per_epoch = math.ceil(len(data) / size)
        epoch, position = divmod(index, per_epoch)
        order = self._epoch_order(epoch, len(data))
        return [data[i] for i in order[position * size : (position + 1) * size]]

    @cache  # noqa: B019 - one trainer, a handful of epochs
    def _epoch_order(self, epoch: int, n: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return torch.randperm(n, generator=generator).tolist()

    def autocast(self) -> Any:
        use_bf16 = (
            self.config.bf16 and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16)

    def train_step(self, model: Any, batches: list[dict[str, torch.Tensor]]) -> tuple[float, int]:
        """Forward and backward over the micro-batches of one step; loss is per label token.

        `batches` are the global micro-batches. On several ranks each runs its share of the rows
        with the loss weighted by the global label count, times the world size because DDP and
        FSDP average gradients over ranks: their sum is then the one-process gradient.
        """
        total_labels = sum(label_count(batch) for batch in batches)
        loss_value = 0.0
        tokens = 0
        for index, batch in enumerate(batches):
            tokens += int(batch["attention_mask"].sum())
            picked = self.step_inputs(batch)
            if picked is None:
                continue
            inputs, labels = picked
            inputs = {key: value.to(self.device) for key, value in inputs.items()}
            with gradient_sync(model, enabled=index == len(batches) - 1):
                with self.autocast():
                    output = model(**inputs)
                    # A rank without labels in this batch still joins the backward, at weight 0.
                    loss = (
                        output.loss * (labels / total_labels) if labels else output.logits.sum() * 0
                    )
                (loss * self.world.size if self.world.distributed else loss).backward()
            loss_value += loss.item()
        if self.world.distributed:
            loss_value = self.world.sum(loss_value)[0]
        return loss_value, tokens

    def step_inputs(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], int] | None:
        """What this process runs of `batch`, and its label count; None where it runs nothing
        (one process and no labels: several ranks must all join every step)."""
        if self.world.distributed:
            return self.rank_inputs(batch)
        labels = label_count(batch)
        return (batch, labels) if labels else None

    def rank_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        """This rank's share of a global batch and its label count. A rank with no rows or no
        labels gets rows to run without labels: every rank must join every forward (FSDP gathers
        the weights in it) and backward (DDP reduces the gradients in it)."""
        share = self.world.share(batch)
        labels = label_count(share) if share is not None else 0
        if labels:
            assert share is not None
            return share, labels
        rows = share if share is not None else {key: value[:1] for key, value in batch.items()}
        return {key: value for key, value in rows.items() if key != "labels"}, 0

    def clip_gradients(self, model: Any) -> float | None:
        parameters = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        if self.config.max_grad_norm is None or not parameters:
            return None
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm)
        return float(norm)

    @torch.no_grad()
    def evaluate_loss(self, model: Any, data: list[TokenizedExample], pad_id: int) -> float:
        """Mean loss per assistant token over the validation examples."""
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(data), self.config.batch_size):
            batch = collate(data[start : start + self.config.batch_size], pad_id)
            picked = self.step_inputs(batch)
            if picked is None:
                continue
            inputs, labels = picked
            with self.autocast():
                output = model(**{key: value.to(self.device) for key, value in inputs.items()})
            if labels:
                total += output.loss.item() * labels
                count += labels
        model.train()
        total, labels_seen = self.world.sum(total, count)
        return total / labels_seen if labels_seen else float("nan")

    # -- saving and resuming ---------------------------------------------------------------------

    def save_model(self, model: Any, tokenizer: Any, directory: Path) -> Path:
        """An adapter directory (naming base_model_ref as its base) or a full model directory.
        Every rank calls it (FSDP gathers the weights); rank 0 writes."""
        state = full_model_state(model) if is_sharded(model) else None
        if not self.world.main:
            return directory
        model = unwrap(model)
        directory.mkdir(parents=True, exist_ok=True)
        if self.method.output == "adapter":
            for peft_config in model.peft_config.values():
                peft_config.base_model_name_or_path = self.base_model_ref
                # peft keeps target_modules (and the like) as sets, written in the order of the
                # process's string hashes: sorted, every process writes the same bytes.
                for name, value in vars(peft_config).items():
                    if isinstance(value, set | frozenset):
                        setattr(peft_config, name, sorted(value, key=str))
            # peft's model card (README.md) names the base by the directory it was loaded from,
            # which differs per machine (a Ray worker's scratch, another home): name the registry
            # base there too, so the same training writes the same bytes anywhere.
            base = model.get_base_model()
            base.name_or_path = base.config.name_or_path = self.base_model_ref
            # peft would otherwise copy the whole lm_head into the adapter because it is a target;
            # the vocabulary is unchanged, so only the low-rank weights belong there.
            model.save_pretrained(str(directory), save_embedding_layers=False)
        else:
            model.save_pretrained(str(directory), **({"state_dict": state} if state else {}))
            tokenizer.save_pretrained(str(directory))
        return directory

    def save_checkpoint(
        self,
        model: Any,
        tokenizer: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        step: int,
    ) -> Path:
        directory = self.out_dir / CHECKPOINTS_DIR / f"step-{step}"
        self.save_model(model, tokenizer, directory)
        optimizer_state = (
            full_optimizer_state(model, optimizer) if is_sharded(model) else optimizer.state_dict()
        )
        if not self.world.main:
            return directory
        state = {
            "step": step,
            "method": self.config.method,
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        torch.save(state, directory / STATE_FILE)
        summary = {"step": step, "config": self.config.model_dump(mode="json")}
        (directory / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        return directory

    def load_adapter_weights(self, model: Any, checkpoint: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(checkpoint / "adapter_model.safetensors"), device=str(self.device))
        set_peft_model_state_dict(model, weights)

    def restore_state(
        self,
        checkpoint: Path,
        model: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> int:
        """Optimizer, schedule and RNG as they were; returns the step to continue from."""
        state = torch.load(checkpoint / STATE_FILE, map_location=self.device, weights_only=True)
        if state["method"] != self.config.method:
            raise ValueError(
                f"checkpoint {checkpoint} was made by method {state['method']!r}, "
                f"not {self.config.method!r}; resume with the run's original config"
            )
        if is_sharded(model):
            load_full_optimizer_state(model, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([rng.cpu() for rng in state["cuda_rng"]])
        return int(state["step"])
