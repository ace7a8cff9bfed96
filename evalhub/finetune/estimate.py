"""How many parameters a method trains and roughly how much memory a run needs, before running it.

Formulas (bytes; b = batch size, s = sequence length, h = hidden size, a = attention heads,
L = layers, V = vocabulary, P = all parameters, T = trainable parameters, w = bytes per weight):

- LoRA on a linear layer (in -> out) at rank r trains r * (in + out) parameters; DoRA adds one
  magnitude per output feature.
- weights: P * w; QLoRA stores the decoder's linear weights in 4-bit NF4 with double quantisation,
  (4 + 0.127) / 8 bytes each (Dettmers et al., 2023); adapters are kept in float32.
- gradients: T * w for full and GaLore (trained in the weight dtype), T * 4 for adapters.
- optimizer: AdamW keeps two float32 moments, 8 * T; GaLore keeps them for a projected m x n weight
  at rank r, 8 * r * max(m, n), plus its projector, 4 * r * min(m, n).
- activations: L * s * b * h * (34 + 5 * a * s / h) * w / 2 (Korthikanti et al., 2022, for 16-bit
  activations), plus 8 * s * b * V for float32 logits and their gradient. With gradient
  checkpointing only each layer's input, s * b * h * w, is kept, plus one layer's activations.
These are estimates for planning: allocator overhead, CUDA context and kernels' workspaces are not in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
NF4_DOUBLE_QUANT_BYTES = (4 + 0.127) / 8
ADAPTER_METHODS = ("lora", "dora", "qlora")
ATTENTION = ("q_proj", "v_proj")


def lora_parameters(in_features: int, out_features: int, rank: int) -> int:
    """A (rank x in) plus B (out x rank): 4096x4096 at rank 16 trains 131,072 instead of 16.8M."""
    return rank * (in_features + out_features)


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> ModelShape:
        """From a Llama-style config: a dict (config.json) or an object with the same attributes."""

        def get(key: str, default: Any = None) -> Any:
            if isinstance(config, Mapping):
                return config.get(key, default)
            return getattr(config, key, default)

        needed = ("num_attention_heads", "hidden_size", "vocab_size", "intermediate_size",
                  "num_hidden_layers")  # fmt: skip
        missing = [key for key in needed if not isinstance(get(key), int)]
        if missing:
            raise ValueError(
                f"the model's config.json has no integer {', '.join(missing)}: the estimate "
                "needs a Llama-style decoder config (register the full model directory)"
            )

        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        return cls(
            vocab_size=int(get("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(get("intermediate_size")),
            num_layers=int(get("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(get("num_key_value_heads") or heads),
            head_dim=int(get("head_dim") or hidden // heads),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        )

    def layer_linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        q = self.num_heads * self.head_dim
        i = self.intermediate_size
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def parameters(self) -> int:
        per_layer = sum(i * o for i, o in self.layer_linears().values()) + 2 * self.hidden_size
        embeddings = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embeddings
        return embeddings + self.num_layers * per_layer + self.hidden_size + head


class Estimate(BaseModel):
    method: str
    total_parameters: int
    trainable_parameters: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int

    @property
    def total_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.gradients_bytes
            + self.optimizer_bytes
            + self.activations_bytes
        )

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_parameters / self.total_parameters


def _targets(shape: ModelShape, target_modules: str | list[str]) -> list[str]:
    if target_modules == "attention":
        return list(ATTENTION)
    if target_modules == "all-linear":
        return list(shape.layer_linears())
    return list(target_modules)


def estimate(
    config: Mapping[str, Any] | Any,
    method: str = "lora",
    *,
    rank: int = 16,
    target_modules: str | list[str] = "all-linear",
    include_lm_head: bool = True,
    batch_size: int = 1,
    seq_len: int = 512,
    dtype: str = "bfloat16",
    gradient_checkpointing: bool = False,
) -> Estimate:
    """Parameters and memory of one training run; see the module docstring for the formulas."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, not {dtype!r}")
    if method not in (*ADAPTER_METHODS, "full", "galore"):
        raise ValueError(f"no estimate for method {method!r}")
    shape = ModelShape.from_config(config)
    w = DTYPE_BYTES[dtype]
    total = shape.parameters()
    linears = shape.layer_linears()
    targets = _targets(shape, target_modules)
    unknown = [name for name in targets if name not in linears]
    if unknown:
        raise ValueError(f"unknown target modules {unknown}; known: {', '.join(linears)}")
    adapted = [linears[name] for name in targets] * shape.num_layers
    if include_lm_head:
        adapted.append((shape.hidden_size, shape.vocab_size))

    if method in ADAPTER_METHODS:
        trainable = sum(lora_parameters(i, o, rank) for i, o in adapted)
        if method == "dora":
            trainable += sum(o for _, o in adapted)
        weights: float = total * w + trainable * 4
        if method == "qlora":
            quantized = shape.num_layers * sum(i * o for i, o in linears.values())
            weights = quantized * NF4_DOUBLE_QUANT_BYTES + (total - quantized) * w + trainable * 4
        gradients = trainable * 4
        optimizer = 8 * trainable
    else:
        trainable = total
        weights = total * w
        gradients = total * w
        optimizer = 8 * total
        if method == "galore":
            projected = [linears[name] for name in targets] * shape.num_layers
            for i, o in projected:
                if rank < min(i, o):
                    optimizer -= 8 * i * o
                    optimizer += 8 * rank * max(i, o) + 4 * rank * min(i, o)

    s, b, h, a = seq_len, batch_size, shape.hidden_size, shape.num_heads
    one_layer = s * b * h * (34 + 5 * a * s / h) * w / 2
    layers = (
        shape.num_layers * s * b * h * w + one_layer
        if gradient_checkpointing
        else shape.num_layers * one_layer
    )
    activations = layers + 8 * s * b * shape.vocab_size
    return Estimate(
        method=method,
        total_parameters=total,
        trainable_parameters=trainable,
        weights_bytes=round(weights),
        gradients_bytes=round(gradients),
        optimizer_bytes=round(optimizer),
        activations_bytes=round(activations),
    )
