"""The slice of the `openai` AsyncOpenAI client that the eval runner calls, answered in-process.

A training job scores its checkpoints through the same runner as any eval run, without a server:
the local engine it already depends on generates, one request at a time, off the event loop.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from evalhub.sampling import SamplingParams
from evalhub.serving.local.generation import GenerationRequest

if TYPE_CHECKING:
    from evalhub.serving.local.engine import LocalEngine


class EngineClient:
    def __init__(self, engine: LocalEngine, adapter: str | None) -> None:
        self.engine = engine
        self.adapter = adapter
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    async def _create(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        temperature: float = 1.0,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        top_p: float | None = None,
    ) -> SimpleNamespace:
        sampling = SamplingParams(
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            stop=tuple(stop or ()),
            top_p=top_p,
        )
        request = GenerationRequest(
            adapter=self.adapter,
            messages=[{"role": m["role"], "content": str(m["content"])} for m in messages],
            sampling=sampling,
        )
        result = await asyncio.to_thread(self.engine.generate, request)
        return SimpleNamespace(
            model=model,
            usage=SimpleNamespace(
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens
            ),
            choices=[
                SimpleNamespace(
                    message=SimpleNamespace(content=result.text),
                    finish_reason=result.finish_reason,
                )
            ],
        )
