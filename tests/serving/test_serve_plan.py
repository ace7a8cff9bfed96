"""The serve plan's decision table: how an arm's adapter is served by a backend of each kind."""

from __future__ import annotations

from typing import Any

import pytest

from evalhub.serving.serve_plan import PlanRefused, decide

LORA: dict[str, Any] = {"peft_type": "LORA", "target_modules": ["q_proj", "lm_head"]}
DORA = {**LORA, "use_dora": True}
SAVES_HEAD = {**LORA, "modules_to_save": ["lm_head"]}
SAVES_SCORE = {**LORA, "modules_to_save": ["score"]}
IA3 = {"peft_type": "IA3"}


@pytest.mark.parametrize(
    ("config", "backend", "mode", "plan"),
    [
        (LORA, "vllm", "auto", "adapter"),
        (LORA, "vllm", "adapter", "adapter"),
        (LORA, "vllm", "merged", "merged"),
        (LORA, "local", "auto", "adapter"),
        (DORA, "vllm", "auto", "merged"),
        (DORA, "vllm", "merged", "merged"),
        (DORA, "local", "auto", "adapter"),
        (DORA, "local", "adapter", "adapter"),
        (DORA, "local", "merged", "merged"),
        (SAVES_HEAD, "vllm", "auto", "merged"),
        (SAVES_HEAD, "local", "auto", "adapter"),
        (SAVES_SCORE, "vllm", "auto", "adapter"),
        (IA3, "vllm", "auto", "merged"),
        ({**LORA, "modules_to_save": None}, "vllm", "auto", "adapter"),
    ],
)
def test_decision_table(config: dict[str, Any], backend: str, mode: str, plan: str) -> None:
    assert decide(config, backend, mode).plan == plan  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (DORA, "vLLM does not load DoRA adapters"),
        (SAVES_HEAD, "vLLM does not load adapters with modules_to_save ['lm_head']"),
        (IA3, "vLLM loads LoRA adapters only, not IA3"),
    ],
)
def test_adapter_is_refused_where_the_backend_cannot_load_it(
    config: dict[str, Any], reason: str
) -> None:
    with pytest.raises(PlanRefused, match=reason.replace("[", r"\[").replace("]", r"\]")):
        decide(config, "vllm", "adapter")
    assert decide(config, "vllm", "auto").reason == reason
