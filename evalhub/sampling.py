"""Sampling parameters as OpenAI's API takes them: one model for what the eval runner sends,
what the local engine runs, and what the generation cache keys on."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SamplingParams(BaseModel):
    """`temperature=0` is greedy; `max_tokens=None` means up to the context limit; `top_p=None`
    leaves the backend's default (1.0, no truncation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=1.0, ge=0.0)
    max_tokens: int | None = Field(default=None, gt=0)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
