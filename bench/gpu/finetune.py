"""Fine-tuning on the GPU: peak memory and tokens per second of every evalhub method against a plain
Hugging Face Trainer (+ peft) on the same random Llama and the same packed batches.

  python bench/gpu/finetune.py run [--runs main|galore|all|evalhub:lora,hf:lora] [--deadline T]
  python bench/gpu/finetune.py build              # only the random base model
  python bench/gpu/finetune.py worker --runs ... --result-dir DIR   # what `run` starts

`run` builds the base in one process, then starts one worker process per configuration (so each
peak is that run's alone and one crash, hang or broken CUDA context costs only that run). Results
are merged into $OUT/finetune.json run by run; every failure keeps its traceback in the log.
Where qlora cannot run (no CUDA, or no bitsandbytes) the record says why, after checking that
evalhub's own TrainConfig refuses it with a clear message.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import gpubench
from gpubench import Deadline, Profile, log

# Pairs of (framework, method) in the order they run: each evalhub method next to its baseline.
MAIN_RUNS = [
    "evalhub:full",
    "hf:full",
    "evalhub:lora",
    "hf:lora",
    "evalhub:qlora",
    "hf:qlora",
    "evalhub:dora",
    "hf:dora",
]
# GaLore after those: its first step computes an SVD of every targeted weight's gradient.
GALORE_RUNS = ["evalhub:galore", "hf:galore"]
# The usual peft recipe (a bf16 base) for reference; last, so the first to go when time is short.
EXTRA_RUNS = ["hf:lora-bf16"]
GROUPS = {
    "main": MAIN_RUNS,
    "galore": GALORE_RUNS,
    "extra": EXTRA_RUNS,
    "all": MAIN_RUNS + GALORE_RUNS + EXTRA_RUNS,
}
RUN_CAP_SECONDS = 120.0  # one configuration's process, start-up included
MIN_START_SECONDS = 30.0  # do not start a configuration with less time left
LORA_RANK = 16
LEARNING_RATE = {"full": 1e-5, "galore": 1e-5}
DEFAULT_LEARNING_RATE = 2e-4
RESULTS_FILE = "finetune.json"


def describe(run: str) -> str:
    framework, method = run.split(":")
    if framework == "evalhub":
        return f"evalhub {method}"
    if method == "lora-bf16":
        return "HF Trainer + peft lora (bf16 base)"
    if method in ("full", "galore"):
        return f"HF Trainer {method}" + (" (galore-torch)" if method == "galore" else "")
    return f"HF Trainer + peft {method}"


def skip_reason(run: str, chosen: Profile) -> str | None:
    """Why a configuration cannot run here, decided before starting a process for it."""
    _, method = run.split(":")
    if method == "qlora" and chosen.device != "cuda":
        return "needs CUDA (bitsandbytes 4-bit NF4 kernels)"
    if method == "qlora" and find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (the GPU image has none)"
    if run == "hf:galore" and find_spec("galore_torch") is None:
        return "galore-torch (HF Trainer's optim='galore_adamw') is not installed"
    return None


def qlora_refusal(reason: str) -> dict[str, Any]:
    """evalhub:qlora's record where it cannot run: skipped if evalhub refuses the config clearly."""
    try:
        from evalhub.finetune.config import TrainConfig

        TrainConfig(method="qlora", method_options={"rank": LORA_RANK})
    except ValueError as error:  # pydantic's ValidationError, wrapping evalhub's MethodError
        errors = getattr(error, "errors", None)
        message = errors()[0]["msg"].removeprefix("Value error, ") if errors else str(error)
        return failure("evalhub:qlora", f"{reason}; evalhub refused it: {message}", "skipped")
    except Exception as error:
        gpubench.error_record(error)
        return failure("evalhub:qlora", f"{reason}; checking evalhub's refusal failed: {error!r}")
    return failure("evalhub:qlora", f"{reason}, yet evalhub's TrainConfig accepted qlora")


# -- shared by both frameworks ------------------------------------------------------------------


def training_examples(chosen: Profile) -> list[dict[str, Any]]:
    from evalhub.finetune.tasks import upper_case_task

    return upper_case_task(chosen.examples, seed=0)


def lora_targets(model: Any) -> list[str]:
    """evalhub's LoRA default: every linear layer plus lm_head (what vLLM can load)."""
    from evalhub.finetune.methods.targets import resolve_target_modules

    return resolve_target_modules(model, "all-linear", include_lm_head=True)


def summarise_steps(
    chosen: Profile, samples: list[tuple[int, float]], peak: int | None
) -> dict[str, Any]:
    """Throughput over the steps after warm-up; every step's time is kept for the JSON."""
    timed = samples[chosen.warmup_steps :]
    if not timed:
        raise RuntimeError(f"only {len(samples)} steps were timed; warm-up alone is excluded")
    tokens = sum(count for count, _ in timed)
    seconds = sum(elapsed for _, elapsed in timed)
    return {
        "tokens_per_step": statistics.median(count for count, _ in timed),
        "tokens_per_second": tokens / seconds,
        "median_step_seconds": statistics.median(elapsed for _, elapsed in timed),
        "first_step_seconds": samples[0][1],
        "step_seconds": [round(elapsed, 4) for _, elapsed in samples],
        "peak_memory_bytes": peak,
    }


# -- evalhub's Trainer ------------------------------------------------------------------------


def run_evalhub(chosen: Profile, method: str, model_dir: Path, scratch: Path) -> dict[str, Any]:
    from evalhub.finetune.config import TrainConfig
    from evalhub.finetune.trainer import Trainer

    options: dict[str, Any] = {}
    if method in ("lora", "dora", "qlora"):
        options = {"rank": LORA_RANK}
    elif method == "galore":
        options = {"rank": chosen.galore_rank}
    config = TrainConfig(
        method=method,
        method_options=options,
        max_steps=chosen.steps,
        batch_size=chosen.batch_size,
        learning_rate=LEARNING_RATE.get(method, DEFAULT_LEARNING_RATE),
        max_seq_len=chosen.seq_len,
        packing=True,
        gradient_checkpointing=chosen.gradient_checkpointing,
        bf16=True,
        seed=0,
        device=chosen.device,
    )
    samples: list[tuple[int, float]] = []
    reported: list[dict[str, Any]] = []

    class TimedTrainer(Trainer):
        """evalhub's Trainer, timing each step from its first forward to its optimizer step."""

        step_started = 0.0
        step_tokens = 0
        model_ref: Any = None
        optimizer_ref: Any = None

        def build_optimizer(self, model: Any) -> Any:
            self.model_ref = model
            self.optimizer_ref = super().build_optimizer(model)
            return self.optimizer_ref

        def train_step(self, model: Any, batches: Any) -> tuple[float, int]:
            gpubench.synchronize(chosen.device)
            self.step_started = time.perf_counter()
            loss, self.step_tokens = super().train_step(model, batches)
            return loss, self.step_tokens

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "step":
            gpubench.synchronize(chosen.device)
            samples.append((trainer.step_tokens, time.perf_counter() - trainer.step_started))
            reported.append(event)
        elif event["type"] == "warning":
            log(f"  evalhub {method}: {event['message']}")

    out = scratch / f"evalhub-{method}"
    trainer = TimedTrainer(config, model_dir, out, on_event=on_event, base_model_ref="gpu-bench")
    result = trainer.run(training_examples(chosen))
    summary = summarise_steps(chosen, samples, gpubench.peak_bytes(chosen.device))
    saved = sum(path.stat().st_size for path in result.output_dir.rglob("*") if path.is_file())
    timed_reports = reported[chosen.warmup_steps :]
    summary |= gpubench.model_stats(trainer.model_ref)
    summary |= {
        "optimizer_state_bytes": gpubench.tensor_bytes(
            [dict(state) for state in trainer.optimizer_ref.state.values()]
        ),
        "final_loss": result.train_loss,
        # What evalhub's own metrics said (its peak and its unsynchronised tokens/s per step).
        "reported_peak_memory_bytes": reported[-1]["peak_memory"],
        "reported_tokens_per_second": statistics.median(
            event["tokens_per_second"] for event in timed_reports
        )
        if timed_reports
        else None,
        "saved_output": result.output_kind,
        "saved_bytes": saved,
    }
    shutil.rmtree(out, ignore_errors=True)
    return summary


# -- plain Hugging Face Trainer (+ peft) --------------------------------------------------------


def load_hf_model(chosen: Profile, method: str, model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    cuda = chosen.device == "cuda"
    if method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir),
            dtype=torch.float32,
            quantization_config=quantization,
            device_map={"": 0},
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        # Full-precision weights with bf16 autocast, as evalhub does; "lora-bf16" loads the base in
        # bf16, the usual peft recipe.
        dtype = torch.bfloat16 if method == "lora-bf16" and cuda else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        model = model.to(chosen.device)
    if method in ("lora", "dora", "qlora", "lora-bf16"):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=LORA_RANK,
            lora_alpha=2 * LORA_RANK,
            lora_dropout=0.05,
            target_modules=lora_targets(model),
            use_dora=method == "dora",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    return model


def run_hf(chosen: Profile, method: str, model_dir: Path, scratch: Path) -> dict[str, Any]:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from evalhub.finetune.batching import collate
    from evalhub.finetune.loading import load_tokenizer
    from evalhub.finetune.methods.targets import linear_module_names
    from evalhub.finetune.tokenize import pack, tokenize_dataset

    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_dir)
    data = tokenize_dataset(tokenizer, training_examples(chosen), chosen.seq_len).examples
    data = pack(data, chosen.seq_len)
    model = load_hf_model(chosen, method, model_dir)
    batch_tokens: list[int] = []
    samples: list[tuple[int, float]] = []
    peak: list[int | None] = [None]

    def collator(examples: list[Any]) -> dict[str, torch.Tensor]:
        batch = collate(examples, tokenizer.pad_token_id)
        batch_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    class Timer(TrainerCallback):
        started = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            gpubench.reset_peak(chosen.device)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            gpubench.synchronize(chosen.device)
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            gpubench.synchronize(chosen.device)
            # The dataloader may collate ahead; step i trained on the i-th collated batch.
            samples.append((batch_tokens[len(samples)], time.perf_counter() - self.started))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            peak[0] = gpubench.peak_bytes(chosen.device)

    cuda = chosen.device == "cuda"
    extra: dict[str, Any] = {}
    if method == "galore":
        extra = {
            "optim": "galore_adamw",
            "optim_target_modules": linear_module_names(model),
            "optim_args": f"rank={chosen.galore_rank},update_proj_gap=200,scale=0.25",
        }
    out = scratch / f"hf-{method}"
    arguments = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=chosen.batch_size,
        max_steps=chosen.steps,
        learning_rate=LEARNING_RATE.get(method, DEFAULT_LEARNING_RATE),
        warmup_steps=0,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        bf16=cuda,
        gradient_checkpointing=chosen.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=not cuda,
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
        **extra,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=data,
        data_collator=collator,
        callbacks=[Timer()],
    )
    output = trainer.train()
    summary = summarise_steps(chosen, samples, peak[0])
    summary |= gpubench.model_stats(model)
    summary |= {
        "optimizer_state_bytes": gpubench.tensor_bytes(
            [dict(state) for state in trainer.optimizer.state.values()]
        ),
        "final_loss": output.training_loss,
        "optimizer": str(arguments.optim),
    }
    shutil.rmtree(out, ignore_errors=True)
    return summary


# -- processes ----------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Profile, str, Path, Path], dict[str, Any]]] = {
    "evalhub": run_evalhub,
    "hf": run_hf,
}


def run_one(chosen: Profile, run: str, model_dir: Path, scratch: Path) -> dict[str, Any]:
    framework, method = run.split(":")
    record: dict[str, Any] = {"run": run, "name": describe(run), "framework": framework}
    record["method"] = method
    started = time.perf_counter()
    log(f"-- {describe(run)}: starting")
    try:
        record |= RUNNERS[framework](chosen, method, model_dir, scratch)
        record["status"] = "ok"
    except Exception as error:
        record |= {"status": "failed"} | gpubench.error_record(error)
    finally:
        record["wall_seconds"] = round(time.perf_counter() - started, 2)
        gpubench.free_memory()
    peak = gpubench.gib(record.get("peak_memory_bytes"))
    speed = record.get("tokens_per_second")
    log(
        f"-- {describe(run)}: {record['status']} in {record['wall_seconds']}s"
        + (f", peak {peak} GiB, {speed:,.0f} tokens/s" if speed else "")
        + (f": {record.get('error') or record.get('reason')}" if record["status"] != "ok" else "")
    )
    return record


def worker(runs: list[str], result_dir: Path) -> None:
    chosen = gpubench.profile()
    model_dir = gpubench.ensure_base_model(chosen)
    scratch = Path(tempfile.mkdtemp(dir=gpubench.work_dir(), prefix="runs-"))
    try:
        for run in runs:
            record = run_one(chosen, run, model_dir, scratch)
            gpubench.write_json(result_dir / f"{run.replace(':', '-')}.json", record)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def start(arguments: list[str], timeout: float) -> tuple[int | None, float]:
    """Runs this file with `arguments` in a new process; (exit code or None on timeout, seconds)."""
    started = time.perf_counter()
    command = [sys.executable, str(Path(__file__).resolve()), *arguments]
    try:
        code: int | None = subprocess.run(command, timeout=timeout, check=False).returncode
    except subprocess.TimeoutExpired:
        code = None
    return code, time.perf_counter() - started


def merge_results(chosen: Profile, records: list[dict[str, Any]]) -> Path:
    """Adds records to $OUT/finetune.json, replacing earlier records of the same runs."""
    path = gpubench.out_dir() / RESULTS_FILE
    payload = gpubench.read_json(path) or {}
    if payload.get("profile", {}).get("name") != chosen.name:
        payload = {"runs": []}
    kept = [item for item in payload["runs"] if item["run"] not in {r["run"] for r in records}]
    order = GROUPS["all"]
    runs = sorted(
        kept + records, key=lambda r: order.index(r["run"]) if r["run"] in order else len(order)
    )
    payload = {
        "profile": asdict(chosen),
        "lora": {"rank": LORA_RANK, "alpha": 2 * LORA_RANK, "targets": "all-linear + lm_head"},
        "precision": "fp32 weights + bf16 autocast on CUDA (evalhub's Trainer); fp32 on CPU",
        "runs": runs,
    }
    gpubench.write_json(path, payload)
    return path


def orchestrate(runs: list[str], deadline: Deadline) -> None:
    chosen = gpubench.profile()
    started = time.perf_counter()
    log(f"fine-tuning ({chosen.name}): {', '.join(runs)}")
    # The base is built in its own process, outside any run's time limit.
    code, seconds = start(["build"], max(1.0, min(deadline.left(), 300.0)))
    if code != 0:
        reason = "timed out" if code is None else f"exit code {code}"
        log(f"FAILED: building the random base model ({reason} after {seconds:.0f}s); see the log")
        merge_results(chosen, [failure(run, f"base model not built ({reason})") for run in runs])
        log(f"result: random base model not built ({reason})")
        sys.exit(1)
    records: list[dict[str, Any]] = []
    pending: list[str] = []
    for run in runs:
        reason = skip_reason(run, chosen)
        if reason is None:
            pending.append(run)
            continue
        record = (
            qlora_refusal(reason) if run == "evalhub:qlora" else failure(run, reason, "skipped")
        )
        log(f"-- {describe(run)}: {record['status']}, {record.get('reason') or record['error']}")
        records.append(record)
    with tempfile.TemporaryDirectory(dir=gpubench.work_dir(), prefix="results-") as results:
        result_dir = Path(results)
        for run in pending:
            if not deadline.allows(MIN_START_SECONDS):
                log(f"-- {describe(run)}: skipped, {deadline.left():.0f}s left of the budget")
                records.append(failure(run, "time budget spent", status="skipped"))
                continue
            limit = max(1.0, min(RUN_CAP_SECONDS, deadline.left()))
            code, seconds = start(["worker", "--runs", run, "--result-dir", str(result_dir)], limit)
            record = gpubench.read_json(result_dir / f"{run.replace(':', '-')}.json")
            if record is None:
                reason = (
                    f"timed out after {seconds:.0f}s"
                    if code is None
                    else f"worker exited with code {code} after {seconds:.0f}s"
                )
                log(f"FAILED: {describe(run)}: {reason}, no result; see the log above")
                record = failure(run, f"{reason}; no result (see the log)")
            records.append(record)
            merge_results(chosen, records)
    path = merge_results(chosen, records)
    failed = [r["run"] for r in records if r["status"] == "failed"]
    skipped = [r["run"] for r in records if r["status"] == "skipped"]
    log(f"fine-tuning part done in {time.perf_counter() - started:.0f}s; wrote {path}")
    counts = [f"{sum(r['status'] == 'ok' for r in records)} ok"]
    for label, names in (("failed", failed), ("skipped", skipped)):
        if names:
            counts.append(f"{len(names)} {label} ({', '.join(names)})")
    log(f"result: {', '.join(counts)}")
    if failed:
        sys.exit(1)


def failure(run: str, reason: str, status: str = "failed") -> dict[str, Any]:
    framework, method = run.split(":")
    record = {"run": run, "name": describe(run), "framework": framework, "method": method}
    key = "reason" if status == "skipped" else "error"
    return record | {"status": status, key: reason}


def parse_runs(value: str) -> list[str]:
    if value in GROUPS:
        return GROUPS[value]
    runs = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [run for run in runs if run not in GROUPS["all"]]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; known: {', '.join(GROUPS['all'])}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=("run", "build", "worker"))
    parser.add_argument("--runs", default="all", help="main, galore, all, or a list a:b,c:d")
    parser.add_argument("--deadline", type=float, default=None, help="epoch seconds")
    parser.add_argument("--result-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "build":
        gpubench.ensure_base_model(gpubench.profile())
    elif args.command == "worker":
        if args.result_dir is None:
            raise SystemExit("worker needs --result-dir")
        worker(parse_runs(args.runs), args.result_dir)
    else:
        orchestrate(parse_runs(args.runs), Deadline(args.deadline))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
