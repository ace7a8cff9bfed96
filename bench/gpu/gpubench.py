"""What the GPU benchmark parts share: the two profiles (H200 and CPU dry run), the random base model
with its tokenizer, deadlines, timing and result files.

Nothing here imports torch at module level, so the orchestrating processes stay light; the functions
that need torch, transformers or peft import them when called.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MODEL_MARKER = "gpubench.json"
GIB = 2**30


@dataclass(frozen=True)
class Profile:
    """The model shape and the sizes of every measurement for one kind of run."""

    name: str
    device: str
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    kv_heads: int
    vocab_size: int
    max_positions: int
    # fine-tuning
    batch_size: int
    seq_len: int
    warmup_steps: int
    timed_steps: int
    examples: int
    gradient_checkpointing: bool
    galore_rank: int
    # serving
    adapters: int
    serve_requests: int
    serve_max_tokens: int

    @property
    def steps(self) -> int:
        return self.warmup_steps + self.timed_steps


# A 1B-class Llama (TinyLlama-1.1B's shape: 22 layers, hidden 2048, grouped-query attention, a
# 32,000-token vocabulary) with random weights, as the issue asks: nothing can be downloaded on the
# device machine. Few timed steps and short generations keep every configuration inside 8 minutes;
# what does not fit is recorded as skipped ("time budget spent"), never dropped silently.
H200 = Profile(
    name="h200",
    device="cuda",
    hidden_size=2048,
    intermediate_size=5632,
    layers=22,
    heads=32,
    kv_heads=4,
    vocab_size=32000,
    max_positions=2048,
    batch_size=4,
    seq_len=512,
    warmup_steps=2,
    timed_steps=6,
    examples=400,
    gradient_checkpointing=True,
    galore_rank=128,
    adapters=4,
    serve_requests=24,
    serve_max_tokens=24,
)

# Every code path on CPU in seconds; qlora is skipped (bitsandbytes 4-bit needs CUDA).
DRY_RUN = Profile(
    name="dry-run",
    device="cpu",
    hidden_size=64,
    intermediate_size=128,
    layers=2,
    heads=4,
    kv_heads=2,
    vocab_size=1024,
    max_positions=256,
    batch_size=2,
    seq_len=64,
    warmup_steps=1,
    timed_steps=2,
    examples=60,
    gradient_checkpointing=True,
    galore_rank=8,
    adapters=3,
    serve_requests=12,
    serve_max_tokens=8,
)


def is_dry_run() -> bool:
    return os.environ.get("EVALHUB_GPU_DRY_RUN", "0") not in ("", "0", "false", "no")


def profile() -> Profile:
    """The dry-run profile when EVALHUB_GPU_DRY_RUN is set, else the H200 one.

    EVALHUB_GPU_GRAD_CKPT=0 turns gradient checkpointing off for every fine-tuning run.
    """
    chosen = DRY_RUN if is_dry_run() else H200
    checkpointing = os.environ.get("EVALHUB_GPU_GRAD_CKPT")
    if checkpointing is not None:
        values = asdict(chosen) | {"gradient_checkpointing": checkpointing not in ("0", "")}
        chosen = Profile(**values)
    return chosen


def out_dir() -> Path:
    """Where results go: $OUT on the device machine, bench/results/gpu elsewhere."""
    path = Path(os.environ.get("EVALHUB_GPU_OUT") or Path(__file__).parent.parent / "results/gpu")
    path.mkdir(parents=True, exist_ok=True)
    return path


def work_dir() -> Path:
    """Scratch space for the model, adapters and checkpoints (local disk, not returned)."""
    default = "/tmp/evalhub-gpu-dry" if is_dry_run() else "/tmp/evalhub-gpu"
    path = Path(os.environ.get("EVALHUB_GPU_WORK") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


class Deadline:
    """Seconds left until an absolute time (epoch seconds); no deadline when `at` is None."""

    def __init__(self, at: float | None) -> None:
        self.at = at

    def left(self) -> float:
        return float("inf") if self.at is None else self.at - time.time()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


def log(message: str) -> None:
    print(message, flush=True)


def error_record(error: BaseException) -> dict[str, str]:
    """The error for the JSON, with its full traceback also printed to the log (stderr)."""
    text = "".join(traceback.format_exception(error))
    print(text, file=sys.stderr, flush=True)
    return {"error": f"{type(error).__name__}: {error}", "traceback": text}


def write_json(path: Path, payload: Any) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    temporary.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


# -- device helpers (import torch) -------------------------------------------------------------


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def allocated_bytes(device: str) -> int | None:
    """CUDA memory held by live tensors now (an engine's weights, say); None on CPU."""
    import torch

    return int(torch.cuda.memory_allocated()) if device == "cuda" else None


def peak_bytes(device: str) -> int | None:
    """Peak allocated CUDA memory since the last reset; None on CPU (no comparable number)."""
    import torch

    if device != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated())


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a nested dict/list (an optimizer's state, say)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(item) for item in value)
    return 0


def model_stats(model: Any) -> dict[str, int]:
    """Parameter counts and bytes as stored (a 4-bit weight counts its packed bytes)."""
    total = trainable = stored = 0
    for parameter in model.parameters():
        total += parameter.numel()
        stored += parameter.numel() * parameter.element_size()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return {"params": total, "trainable_params": trainable, "param_bytes": stored}


# -- the random base model --------------------------------------------------------------------


def padded_tokenizer(vocab_size: int) -> Any:
    """evalhub's byte-level BPE (tiny.build_tokenizer) with the vocabulary padded to `vocab_size`.

    The padding entries ("~600~", ...) are never produced by encoding (no merge leads to them) but
    decode to distinct text, so greedy outputs of a random model with a 32,000-token head can be
    compared as text.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from evalhub.finetune.tiny import CHAT_TEMPLATE, ROLE_TOKENS, build_tokenizer

    base = build_tokenizer(seed=0, vocab_size=512)
    spec = json.loads(base.backend_tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is below the tokenizer's {len(vocab)}")
    next_id = max(vocab.values()) + 1
    while next_id < vocab_size:
        vocab[f"~{next_id}~"] = next_id
        next_id += 1
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token=base.bos_token,
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        additional_special_tokens=["<|end|>", *ROLE_TOKENS],
        padding_side="left",
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"padded tokenizer has {len(tokenizer)} tokens, wanted {vocab_size}")
    return tokenizer


def model_shape(chosen: Profile) -> dict[str, int]:
    """What the saved base depends on (a different shape means a rebuild)."""
    fields = ("hidden_size", "intermediate_size", "layers", "heads", "kv_heads", "vocab_size")
    return {name: getattr(chosen, name) for name in (*fields, "max_positions")}


def base_model_dir(chosen: Profile) -> Path:
    return work_dir() / f"base-{chosen.name}"


def ensure_base_model(chosen: Profile) -> Path:
    """The random Llama of `chosen`'s shape saved (bf16 safetensors + tokenizer); built once."""
    directory = base_model_dir(chosen)
    marker = directory / MODEL_MARKER
    if read_json(marker) == model_shape(chosen):
        return directory
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    tokenizer = padded_tokenizer(chosen.vocab_size)
    config = LlamaConfig(
        vocab_size=chosen.vocab_size,
        hidden_size=chosen.hidden_size,
        intermediate_size=chosen.intermediate_size,
        num_hidden_layers=chosen.layers,
        num_attention_heads=chosen.heads,
        num_key_value_heads=chosen.kv_heads,
        max_position_embeddings=chosen.max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(chosen.device):
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    params = sum(parameter.numel() for parameter in model.parameters())
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    write_json(marker, model_shape(chosen))
    log(
        f"built random base {directory}: {params / 1e9:.3f}B parameters, bf16, "
        f"in {time.perf_counter() - started:.1f}s"
    )
    del model
    free_memory()
    return directory
