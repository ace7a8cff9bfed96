"""The serve plan: how a deployment arm's adapter is served by a backend of a given kind.

`adapter` hot-loads the PEFT adapter into the backend (one base model, many adapters); `merged`
serves the adapter merged into its base (peft's `merge_and_unload`) as a base model of its own,
on a backend that serves that merged model; `auto` (the default) picks `adapter` where the backend
can load the adapter and `merged` where it cannot. vLLM loads plain LoRA only: it refuses DoRA,
and `modules_to_save` other than a classification head (HTTP 500 from `/v1/load_lora_adapter`).

Pure functions of the adapter's `adapter_config.json` and the backend's kind, so the decision
is the same in the API, the gateway and the tests. The registry records what the decision reads
(`peft_method`, `modules_to_save`) when the version is registered: `adapter_config_of` rebuilds
it without touching the artifact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from registry.entities import ModelVersion

ServeMode = Literal["adapter", "merged", "auto"]
Plan = Literal["adapter", "merged"]

# What vLLM 0.32 accepts in `modules_to_save` (it refuses any other module).
VLLM_MODULES_TO_SAVE = frozenset({"classifier", "score"})


class PlanRefused(ValueError):
    """The arm asks for `adapter` on a backend that cannot load the adapter."""


@dataclass(frozen=True)
class ServePlan:
    plan: Plan
    reason: str


def cannot_load(adapter_config: Mapping[str, Any], backend_kind: str) -> str | None:
    """Why a backend of `backend_kind` cannot hot-load this adapter; None when it can."""
    if backend_kind != "vllm":
        return None  # the local backend is peft itself: it loads whatever peft saved
    peft_type = str(adapter_config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        return f"vLLM loads LoRA adapters only, not {peft_type}"
    if adapter_config.get("use_dora"):
        return "vLLM does not load DoRA adapters"
    saved = set(adapter_config.get("modules_to_save") or ())
    if saved - VLLM_MODULES_TO_SAVE:
        return f"vLLM does not load adapters with modules_to_save {sorted(saved)}"
    return None


def decide(
    adapter_config: Mapping[str, Any], backend_kind: str, mode: ServeMode = "auto"
) -> ServePlan:
    """`adapter` or `merged` for an arm asking for `mode`; refuses `adapter` where it cannot load."""
    refusal = cannot_load(adapter_config, backend_kind)
    if mode == "merged":
        return ServePlan("merged", "the arm asks for the merged model")
    if refusal is None:
        return ServePlan("adapter", f"a {backend_kind} backend loads it")
    if mode == "adapter":
        raise PlanRefused(refusal)
    return ServePlan("merged", refusal)


def adapter_config_of(version: ModelVersion) -> dict[str, Any]:
    """The fields of `adapter_config.json` the plan reads, as the registry recorded them."""
    method = (version.peft_method or "lora").lower()
    return {
        "peft_type": "LORA" if method in ("lora", "dora") else method.upper(),
        "use_dora": method == "dora",
        "modules_to_save": version.modules_to_save,
    }
