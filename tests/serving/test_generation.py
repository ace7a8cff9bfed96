"""Stop-string handling, the part of streaming that decides what may be sent yet."""

from __future__ import annotations

import pytest

from evalhub.serving.local.generation import (
    GenerationChunk,
    GenerationRequest,
    collect,
    first_stop,
    partial_stop_length,
)


def test_first_stop_finds_the_earliest_of_several() -> None:
    assert first_stop("cat dog. bird\n", ["\n", "."]) == 7
    assert first_stop("cat dog", ["x"]) is None
    assert first_stop("cat", []) is None


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [
        ("cat do", ["dog"], 2),
        ("cat d", ["dog", "d!"], 1),
        ("cat", ["dog"], 0),
        ("ab", ["abc"], 2),
        ("xab", ["abab"], 2),
        ("anything", [], 0),
    ],
)
def test_partial_stop_length_holds_back_what_may_become_a_stop(
    text: str, stops: list[str], held: int
) -> None:
    assert partial_stop_length(text, stops) == held


def test_collect_joins_deltas_and_keeps_the_final_counts() -> None:
    result = collect(
        [GenerationChunk("ca"), GenerationChunk("t"), GenerationChunk("", "stop", 5, 3)]
    )
    assert (result.text, result.finish_reason, result.prompt_tokens) == ("cat", "stop", 5)
    assert result.completion_tokens == 3


def test_request_needs_exactly_one_of_prompt_and_messages() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        GenerationRequest()
    with pytest.raises(ValueError, match="exactly one"):
        GenerationRequest(prompt="a", messages=[{"role": "user", "content": "a"}])
