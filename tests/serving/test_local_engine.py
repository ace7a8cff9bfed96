"""The engine without HTTP: adapter lifecycles that once broke peft's bookkeeping, and errors."""

from __future__ import annotations

import pytest

from evalhub.serving.local.errors import ServingError
from evalhub.serving.local.generation import GenerationRequest, SamplingParams
from tests.serving.conftest import Models


def greedy(engine, adapter: str | None) -> str:  # type: ignore[no-untyped-def]
    request = GenerationRequest(
        adapter=adapter, prompt="the cat", sampling=SamplingParams(max_tokens=8, temperature=0)
    )
    return engine.generate(request).text


def test_unloading_the_active_adapter_and_then_all_keeps_every_answer(models: Models) -> None:
    from evalhub.serving.local.engine import LocalEngine

    engine = LocalEngine(models.base, device="cpu")
    base = greedy(engine, None)
    engine.load_adapter("a", models.alpha)
    engine.load_adapter("b", models.beta)
    alpha, beta = greedy(engine, "a"), greedy(engine, "b")
    assert len({base, alpha, beta}) == 3
    engine.unload_adapter("b")  # the adapter peft last had active
    assert (greedy(engine, None), greedy(engine, "a")) == (base, alpha)
    engine.unload_adapter("a")  # none left
    assert greedy(engine, None) == base
    with pytest.raises(ServingError) as missing:
        greedy(engine, "a")
    assert missing.value.status_code == 404
    engine.load_adapter("b", models.beta)
    assert (greedy(engine, None), greedy(engine, "b")) == (base, beta)


def test_refused_loads_leave_the_engine_as_it_was(engine, models: Models) -> None:  # type: ignore[no-untyped-def]
    before = [adapter.name for adapter in engine.adapters()]
    answers = (greedy(engine, None), greedy(engine, "alpha"))
    for path, status in ((models.wide, 400), (models.outside, 400), ("missing", 404)):
        with pytest.raises(ServingError) as refused:
            engine.load_adapter("refused", path)
        assert refused.value.status_code == status
    assert [adapter.name for adapter in engine.adapters()] == before
    assert (greedy(engine, None), greedy(engine, "alpha")) == answers


def test_a_prompt_longer_than_the_context_is_refused(engine) -> None:  # type: ignore[no-untyped-def]
    request = GenerationRequest(prompt="cat " * 400, sampling=SamplingParams(max_tokens=4))
    with pytest.raises(ServingError, match="maximum context length"):
        engine.generate(request)
