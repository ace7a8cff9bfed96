"""The local engine: one transformers base model with many PEFT LoRA adapters, on CPU or GPU.

Requests are decoded one at a time under one lock, each with its own adapter switched on (or all of
them off for the base). That is slower than batching, and deliberate: the vLLM CPU build lets one
request's adapter leak into another in mixed batches, and this backend must never do that.
Adapters are loaded into peft under internal names (`adapter_1`, ...) because served names such as
`ft:tiny:bot:3` or digests contain characters peft cannot use as module keys, and because an in-place
reload can then load the new weights fully before the name is switched over to them.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import threading
import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.helpers import DoraCaching
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from evalhub.sampling import SamplingParams
from evalhub.serving.local.errors import ServingError, bad_request, model_not_found, not_found
from evalhub.serving.local.generation import (
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    collect,
    first_stop,
    partial_stop_length,
)
from registry.errors import ErrorCode, RegistryError
from registry.inspect import check_adapter_fits_base

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    path: Path
    internal_name: str
    loaded_at: float


class LocalEngine:
    """Serves `base_dir` and the adapters loaded on it; safe to call from many threads."""

    def __init__(
        self,
        base_dir: Path | str,
        *,
        device: str | None = None,
        allowed_root: Path | str | None = None,
        max_model_len: int | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        if not (self.base_dir / "config.json").is_file():
            raise not_found(f"No model directory at {self.base_dir}: expected a config.json there")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # float32 on CPU: bf16 matmuls there are slow and greedy answers drift from reference runs.
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if self.device.type == "cpu":
            # peft recomputes each DoRA layer's weight norm (from base + B·A) at every forward, so
            # every generated token: 5x slower answers on SmolLM2. Its cache keeps them per
            # adapter in eval mode (adapters here are never trained; an unloaded one takes its
            # cache along), at the cost of one B·A per adapted matrix: on CPU, for the small
            # models served here, memory to spare; on a GPU, where that is a large model's
            # weights again, it stays off. A process-wide switch; training mode bypasses it.
            DoraCaching()(enabled=True)
        self.allowed_root = Path(allowed_root).resolve() if allowed_root is not None else None
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.base_dir))
        base = AutoModelForCausalLM.from_pretrained(str(self.base_dir), dtype=self.dtype)
        self._base: torch.nn.Module = base.to(self.device).eval()
        self._peft: PeftModel | None = None  # created by the first adapter load
        self.max_model_len = max_model_len or int(
            getattr(base.config, "max_position_embeddings", None) or 2048
        )
        self._eos_ids = _eos_ids(base, self.tokenizer)
        # transformers 5 renamed `past_key_values` to `cache` (the old name still works, with a warning).
        parameters = inspect.signature(base.forward).parameters
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self._adapters: dict[str, LoadedAdapter] = {}
        self._internal_names = (f"adapter_{n}" for n in itertools.count(1))
        # One lock for the model: decoding and adapter (un)loading never overlap.
        self._model_lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self._name_locks_guard = threading.Lock()

    # -- adapters ---------------------------------------------------------------------------------

    def adapters(self) -> list[LoadedAdapter]:
        return sorted(list(self._adapters.values()), key=lambda adapter: adapter.loaded_at)

    def has_adapter(self, name: str) -> bool:
        return name in self._adapters

    def load_adapter(
        self, name: str, path: Path | str, *, load_inplace: bool = False
    ) -> LoadedAdapter:
        """Loads a PEFT adapter directory under `name` (400 if taken, unless `load_inplace`)."""
        directory = self._resolve_adapter_dir(path)
        with self._name_lock(name):
            if name in self._adapters and not load_inplace:
                raise bad_request(
                    f"The lora adapter '{name}' has already been loaded. If you want to load the "
                    "adapter in place, set 'load_inplace' to True.",
                    "lora_name",
                )
            try:
                check_adapter_fits_base(directory, self.base_dir, f"the base at {self.base_dir}")
            except RegistryError as error:
                status = 404 if error.code == ErrorCode.NOT_FOUND else 400
                raise ServingError(status, error.message, "lora_path") from error
            except (OSError, ValueError) as error:  # unreadable config or weights
                raise bad_request(
                    f"Could not read the adapter at {directory}: {error}", "lora_path"
                ) from error
            with self._model_lock:
                internal_name = next(self._internal_names)
                self._attach(directory, internal_name)
                previous = self._adapters.get(name)
                loaded = LoadedAdapter(name, directory, internal_name, time.time())
                self._adapters[name] = loaded
                if previous is not None:
                    self._detach(previous.internal_name)
            return loaded

    def unload_adapter(self, name: str) -> None:
        """Unloads `name` after the request decoding now (if any) finishes; 404 if not loaded."""
        with self._name_lock(name), self._model_lock:
            loaded = self._adapters.pop(name, None)
            if loaded is None:
                raise not_found(f"The lora adapter '{name}' cannot be found.", "lora_name")
            self._detach(loaded.internal_name)

    def _name_lock(self, name: str) -> threading.Lock:
        with self._name_locks_guard:
            return self._name_locks.setdefault(name, threading.Lock())

    def _resolve_adapter_dir(self, path: Path | str) -> Path:
        candidate = Path(path).expanduser()
        if self.allowed_root is not None:
            resolved = (self.allowed_root / candidate).resolve()
            if not resolved.is_relative_to(self.allowed_root):
                raise bad_request(
                    f"lora_path {str(path)!r} is outside the adapter root {self.allowed_root}; "
                    "give a path inside it",
                    "lora_path",
                )
        else:
            resolved = candidate.resolve()
        if not (resolved / ADAPTER_CONFIG).is_file():
            raise not_found(
                f"No adapter found at {path}: expected a directory holding {ADAPTER_CONFIG}",
                "lora_path",
            )
        return resolved

    def _attach(self, directory: Path, internal_name: str) -> None:
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(
                    self._base,
                    str(directory),
                    adapter_name=internal_name,
                    torch_device=str(self.device),
                ).eval()
            else:
                self._peft.load_adapter(
                    str(directory), adapter_name=internal_name, torch_device=str(self.device)
                )
        except Exception as error:
            if self._peft is not None and internal_name in self._peft.peft_config:
                self._detach(internal_name)
            raise bad_request(f"Could not load the adapter at {directory}: {error}") from error

    def _detach(self, internal_name: str) -> None:
        assert self._peft is not None
        with warnings.catch_warnings():
            # peft warns that the deleted adapter was active; the next lines choose another.
            warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted")
            self._peft.delete_adapter(internal_name)
        remaining = list(self._peft.peft_config)
        if remaining:
            # peft leaves a deleted adapter recorded as active; disable_adapter() then fails on it.
            self._peft.set_adapter(remaining[0], inference_mode=True)
        else:
            # With no adapter left peft cannot even disable adapters: back to the plain model.
            self._base = self._peft.unload()
            self._peft = None

    # -- generation -------------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return collect(self.stream(request))

    def stream(self, request: GenerationRequest) -> Generator[GenerationChunk, None, None]:
        """Yields text deltas, then a final chunk with the finish reason and token counts.

        The model lock is held from the first `next()` until the generator ends or is closed, so
        consume it from one thread and close it (or exhaust it) promptly.
        """
        with self._model_lock:
            adapter = self._resolve(request.adapter)
            prompt_ids = self._encode(request)
            budget = self.max_model_len - len(prompt_ids)
            if budget <= 0:
                raise bad_request(
                    f"This model's maximum context length is {self.max_model_len} tokens, but the "
                    f"prompt has {len(prompt_ids)} tokens; shorten the prompt",
                    "messages" if request.messages is not None else "prompt",
                )
            max_tokens = min(request.sampling.max_tokens or budget, budget)
            with self._activate(adapter):
                yield from self._decode(prompt_ids, request.sampling, max_tokens)

    def _resolve(self, name: str | None) -> LoadedAdapter | None:
        if name is None:
            return None
        loaded = self._adapters.get(name)
        if loaded is None:
            raise model_not_found(name)
        return loaded

    def _encode(self, request: GenerationRequest) -> list[int]:
        if request.messages is None:
            assert request.prompt is not None
            return list(self.tokenizer(request.prompt)["input_ids"])
        if not self.tokenizer.chat_template:
            raise bad_request(
                "This model has no chat template; use /v1/completions with a prompt instead",
                "messages",
            )
        text = self.tokenizer.apply_chat_template(
            list(request.messages), add_generation_prompt=True, tokenize=False
        )
        # The template writes the special tokens itself (bos included).
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @contextlib.contextmanager
    def _activate(self, adapter: LoadedAdapter | None) -> Iterator[torch.nn.Module]:
        if self._peft is None:
            yield self._base
        elif adapter is None:
            with self._peft.disable_adapter():
                yield self._peft
        else:
            self._peft.set_adapter(adapter.internal_name, inference_mode=True)
            yield self._peft

    def _decode(
        self, prompt_ids: list[int], sampling: SamplingParams, max_tokens: int
    ) -> Iterator[GenerationChunk]:
        model = self._peft if self._peft is not None else self._base
        generator = torch.Generator(device=self.device)
        generator.manual_seed(sampling.seed if sampling.seed is not None else _random_seed())
        inputs = torch.tensor([prompt_ids], device=self.device)
        # The cache object fills in place, whatever name the output gives it in this version.
        cache = DynamicCache(config=self._base.config)
        generated: list[int] = []
        sent = 0  # characters of the decoded text already yielded
        finish: FinishReason = "length"
        text = ""
        while len(generated) < max_tokens:
            with torch.inference_mode():
                output = model(
                    input_ids=inputs, use_cache=True, logits_to_keep=1, **{self._cache_kwarg: cache}
                )
            token = _next_token(output.logits[0, -1], sampling, generator)
            generated.append(token)
            if token in self._eos_ids:
                finish = "stop"
                break
            text = self.tokenizer.decode(
                generated, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            stop_at = first_stop(text, sampling.stop)
            if stop_at is not None:
                text, finish = text[:stop_at], "stop"
                break
            # Hold back an incomplete UTF-8 character and anything that may become a stop string.
            safe = len(text) if not text.endswith("\ufffd") else len(text.rstrip("\ufffd"))
            safe = min(safe, len(text) - partial_stop_length(text, sampling.stop))
            if safe > sent:
                yield GenerationChunk(text[sent:safe])
                sent = safe
            inputs = torch.tensor([[token]], device=self.device)
        yield GenerationChunk(
            text[sent:],
            finish_reason=finish,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(generated),
        )


def _next_token(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator) -> int:
    logits = logits.float()
    if sampling.greedy:
        return int(torch.argmax(logits))
    probabilities = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probabilities, descending=True)
        # Keep the smallest set of top tokens whose mass reaches top_p (the first always stays).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= sampling.top_p
        sorted_probs[outside] = 0.0
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probabilities, 1, generator=generator))


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return frozenset(token for token in ids if token is not None)


def _random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") & (2**63 - 1)
