"""Fine-tuning on CPU: tokens per second and peak memory of each method on the tiny model, against
a plain Hugging Face `Trainer` (+ peft for LoRA) on the same model, data and batches.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/finetune_cpu.py [--steps 40] [--batch-size 16]
Each configuration runs in a fresh process (peak RSS is per process). Throughput counts only the
steps after the first few (warm-up), timing forward, backward and optimizer step. Prints a table
and writes bench/results/finetune_cpu.json. qlora is skipped on CPU (it needs CUDA).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).parent / "results" / "finetune_cpu.json"
WARMUP_STEPS = 3
LEARNING_RATE = {"full": 1e-3, "galore": 1e-3}
OPTIONS = {"lora": {"rank": 16}, "dora": {"rank": 16}, "galore": {"rank": 16}, "full": {}}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_evalhub(method: str, model_dir: str, steps: int, batch_size: int) -> dict[str, Any]:
    """One evalhub Trainer run, timed from a step's forward to its optimizer step."""
    import torch

    from evalhub.finetune.config import TrainConfig
    from evalhub.finetune.tasks import upper_case_task
    from evalhub.finetune.trainer import Trainer

    torch.set_num_threads(1)
    samples: list[tuple[int, float]] = []

    class TimedTrainer(Trainer):
        def train_step(self, model: Any, batches: Any) -> tuple[float, int]:
            self.step_started = time.perf_counter()
            loss, self.step_tokens = super().train_step(model, batches)
            return loss, self.step_tokens

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "step":
            samples.append((trainer.step_tokens, time.perf_counter() - trainer.step_started))

    config = TrainConfig(
        method=method,
        method_options=OPTIONS[method],
        max_steps=steps,
        batch_size=batch_size,
        learning_rate=LEARNING_RATE.get(method, 3e-3),
        seed=0,
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = TimedTrainer(config, Path(model_dir), Path(out), on_event=on_event)
        result = trainer.run(upper_case_task(steps * batch_size, seed=0))
    timed = samples[WARMUP_STEPS:]
    return {
        "name": f"evalhub {method}",
        "tokens_per_second": sum(t for t, _ in timed) / sum(s for _, s in timed),
        "peak_rss_bytes": _peak_rss(),
        "final_loss": result.train_loss,
    }


def run_hf(method: str, model_dir: str, steps: int, batch_size: int) -> dict[str, Any]:
    """A plain transformers Trainer (and peft for LoRA) on the same tokenised batches."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from evalhub.finetune.batching import collate
    from evalhub.finetune.loading import load_tokenizer
    from evalhub.finetune.methods.targets import resolve_target_modules
    from evalhub.finetune.tasks import upper_case_task
    from evalhub.finetune.tokenize import tokenize_dataset

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(Path(model_dir))
    data = tokenize_dataset(tokenizer, upper_case_task(steps * batch_size, seed=0)).examples
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = resolve_target_modules(model, "all-linear", include_lm_head=True)
        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets)
        )
    batch_tokens: list[int] = []

    def collator(examples: list[Any]) -> dict[str, torch.Tensor]:
        batch = collate(examples, tokenizer.pad_token_id)
        batch_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    step_seconds: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step_seconds.append(time.perf_counter() - self.started)

    with tempfile.TemporaryDirectory() as out:
        arguments = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=LEARNING_RATE.get(method, 3e-3),
            warmup_steps=max(1, round(0.03 * steps)),
            lr_scheduler_type="cosine",
            max_grad_norm=1.0,
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
            remove_unused_columns=False,
            seed=0,
        )
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=data,
            data_collator=collator,
            callbacks=[Timer()],
        )
        output = trainer.train()
    timed = step_seconds[WARMUP_STEPS:]
    # The dataloader collates one batch ahead; tokens per step are the collated batches in order.
    tokens = sum(batch_tokens[WARMUP_STEPS : WARMUP_STEPS + len(timed)])
    return {
        "name": f"HF Trainer {'+ peft ' if method == 'lora' else ''}{method}",
        "tokens_per_second": tokens / sum(timed),
        "peak_rss_bytes": _peak_rss(),
        "final_loss": output.training_loss,
    }


def in_fresh_process(function: Any, *args: Any) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from evalhub.finetune.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as work:
        # Throughput does not depend on what the weights know: no pretraining needed here.
        model_dir = str(build_tiny_model(Path(work) / "tiny", pretrain_steps=0))
        runs = [(run_evalhub, method) for method in ("full", "lora", "dora", "galore")]
        runs += [(run_hf, "full"), (run_hf, "lora")]
        rows = [in_fresh_process(fn, method, model_dir, args.steps, args.batch_size)
                for fn, method in runs]  # fmt: skip
    skipped = {"qlora": "needs CUDA (bitsandbytes 4-bit kernels); refused on CPU"}

    table = Table(
        title=f"fine-tuning on CPU, tiny Llama, batch {args.batch_size}, {args.steps} steps"
    )
    for column in ("run", "tokens/s", "peak RSS (MiB)", "final loss"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in rows:
        table.add_row(
            row["name"],
            f"{row['tokens_per_second']:,.0f}",
            f"{row['peak_rss_bytes'] / 2**20:,.0f}",
            f"{row['final_loss']:.3f}",
        )
    Console().print(table)
    for method, reason in skipped.items():
        print(f"{method}: skipped, {reason}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": int(os.environ["OMP_NUM_THREADS"]),
        "warmup_steps_excluded": WARMUP_STEPS,
        "runs": rows,
        "skipped": skipped,
    }
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
