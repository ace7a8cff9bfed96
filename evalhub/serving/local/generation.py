"""What one request asks of an engine and what it gets back, plus stop-string handling.

Kept free of torch so that servers, the gateway and tests can use these types without loading it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from evalhub.sampling import SamplingParams

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationRequest:
    """Either a raw `prompt` or chat `messages` ({"role", "content"}); `adapter=None` is the base."""

    adapter: str | None = None
    prompt: str | None = None
    messages: Sequence[dict[str, str]] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")


@dataclass(frozen=True)
class GenerationChunk:
    """A text delta; the last chunk of a stream carries the finish reason and the token counts."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


def collect(chunks: Iterable[GenerationChunk]) -> GenerationResult:
    """Joins a stream: the non-streaming answer is by construction the streamed text reassembled."""
    parts: list[str] = []
    for chunk in chunks:
        parts.append(chunk.text)
        if chunk.finish_reason is not None:
            return GenerationResult(
                "".join(parts), chunk.finish_reason, chunk.prompt_tokens, chunk.completion_tokens
            )
    raise RuntimeError("the stream ended without a finish reason")


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string begins in text, or None."""
    found = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return min(found) if found else None


def partial_stop_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of text that could still grow into a stop string.

    A stream must hold that much back: sent text cannot be taken back if the stop completes later.
    """
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest
