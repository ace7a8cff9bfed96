"""A tiny Llama base model built offline, for tests and the demo.

A randomly initialised model with a frozen output head barely learns with LoRA, so the builder gives
it a short full "pretraining" on a copy task (repeat the words of the prompt, in whatever case they
came). It is then a real, if small, pretrained base: LoRA on top of it learns new tasks in seconds.
Everything is seeded and runs on one CPU thread, so the same seed gives bit-identical files; that
is why a build can be kept in the machine's cache and reused (`cached_tiny_model`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from evalhub.finetune.tasks import WORDS

PAD, BOS, EOS, END = "<|pad|>", "<|bos|>", "<|eos|>", "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
SPECIAL_TOKENS = [PAD, BOS, EOS, END, *ROLE_TOKENS]

# An assistant turn ends with eos (the generation stop); other turns end with <|end|>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{{ message['content'] or '' }}"
    "{% if message.get('tool_calls') %}{{ message['tool_calls'] | tojson }}{% endif %}"
    "{{ eos_token }}"
    "{% else %}"
    "<|{{ message['role'] }}|>{{ message['content'] or '' }}<|end|>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

COPY_INSTRUCTIONS = ("repeat", "copy", "say", "echo")
DEFAULT_PRETRAIN_STEPS = 300

ProgressCallback = Callable[[dict[str, Any]], None]


def _random_words(rng: random.Random) -> str:
    words = rng.sample(WORDS, rng.randint(1, 5))
    case = rng.random()
    if case < 0.4:
        return " ".join(words)
    if case < 0.8:
        return " ".join(word.upper() for word in words)
    return " ".join(word.upper() if rng.random() < 0.5 else word for word in words)


def copy_examples(n: int, seed: int) -> list[dict[str, Any]]:
    """'repeat: cat DOG' -> 'cat DOG': teaches the base to read a prompt and emit any word."""
    rng = random.Random(f"copy-{seed}")
    examples = []
    for _ in range(n):
        text = _random_words(rng)
        instruction = rng.choice(COPY_INSTRUCTIONS)
        examples.append(
            {
                "messages": [
                    {"role": "user", "content": f"{instruction}: {text}"},
                    {"role": "assistant", "content": text},
                ]
            }
        )
    return examples


def _tokenizer_corpus(seed: int) -> list[str]:
    rng = random.Random(f"corpus-{seed}")
    lines = [f"{instruction}: upper: lower:" for instruction in COPY_INSTRUCTIONS]
    lines += [_random_words(rng) for _ in range(4000)]
    lines += [" ".join(WORDS), " ".join(word.upper() for word in WORDS)]
    return lines


def build_tokenizer(seed: int = 0, vocab_size: int = 512) -> Any:
    """Byte-level BPE trained on the task vocabulary, wrapped with special tokens and a template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_tokenizer_corpus(seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[END, *ROLE_TOKENS],
        padding_side="left",
        model_max_length=256,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_tiny_model(
    out_dir: Path,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 128,
    layers: int = 2,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    progress: ProgressCallback | None = None,
) -> Path:
    """Build, pretrain and save a tiny Llama (float32 safetensors) plus tokenizer into out_dir."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from evalhub.finetune.batching import collate
    from evalhub.finetune.tokenize import tokenize_dataset

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(seed=seed, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()

    data = tokenize_dataset(tokenizer, copy_examples(pretrain_steps * batch_size, seed)).examples
    # One CPU thread: another thread count sums in another order, and gives other bytes.
    with _one_torch_thread():
        if pretrain_steps > 0:
            optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
            warmup = max(1, pretrain_steps // 10)
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda step: (
                    min(1.0, (step + 1) / warmup)
                    * max(0.05, 1 - max(0, step - warmup) / max(1, pretrain_steps - warmup))
                ),
            )
            model.train()
            for step in range(pretrain_steps):
                batch = collate(
                    data[step * batch_size : (step + 1) * batch_size], config.pad_token_id
                )
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                if progress is not None:
                    progress({"stage": "pretrain", "step": step + 1, "loss": loss.item()})
    model.eval()

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_cache() -> Path:
    """Where builds are kept: evalhub/tiny under XDG_CACHE_HOME (~/.cache by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "evalhub" / "tiny"


def build_key(seed: int, pretrain_steps: int) -> str:
    """Names what a build's bytes depend on: its options, the code that makes it, the libraries
    that run it and the CPU kernels torch picked (AVX2 and AVX-512 round differently)."""
    import torch

    digest = hashlib.sha256()
    for module in ("tiny", "tasks", "tokenize", "batching"):
        spec = importlib.util.find_spec(f"evalhub.finetune.{module}")
        assert spec is not None and spec.origin is not None
        digest.update(Path(spec.origin).read_bytes())
    for package in ("torch", "transformers", "tokenizers"):
        digest.update(f"{package}=={importlib.metadata.version(package)};".encode())
    digest.update(torch.backends.cpu.get_cpu_capability().encode())
    return f"seed{seed}-steps{pretrain_steps}-{digest.hexdigest()[:16]}"


def cached_tiny_model(
    seed: int = 0,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    *,
    cache: Path | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """The build for these options from the cache, built there first if it is missing.

    Every README section and every `make demo` builds the same tiny base; pretraining it is most
    of `evalhub models create-tiny`'s time. Builders of one key take turns on a lock file and a
    build lands by rename, so concurrent callers build once and never see half a directory.
    Callers copy from it; nothing writes into it.
    """
    cache = cache or tiny_cache()
    built = cache / build_key(seed, pretrain_steps)
    if built.is_dir():
        return built
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{built.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.is_dir():
            with tempfile.TemporaryDirectory(dir=cache, prefix=".building-") as work:
                build_tiny_model(
                    Path(work) / "model",
                    seed=seed,
                    pretrain_steps=pretrain_steps,
                    progress=progress,
                )
                (Path(work) / "model").rename(built)
    return built
