from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from evalhub.finetune.tasks import (
    ORDER_SCHEMA,
    order_task,
    read_jsonl,
    upper_case_task,
    write_jsonl,
)


def word_set(example: dict) -> frozenset[str]:
    return frozenset(example["messages"][0]["content"].removeprefix("upper: ").split())


def test_upper_case_examples_are_chat_and_correct() -> None:
    example = upper_case_task(1, seed=0)[0]
    user, assistant = example["messages"]
    assert user["role"] == "user" and user["content"].startswith("upper: ")
    assert assistant == {"role": "assistant", "content": user["content"][7:].upper()}


def test_train_and_held_out_share_no_word_set() -> None:
    train = {word_set(example) for example in upper_case_task(2000, seed=0)}
    held_out = {word_set(example) for example in upper_case_task(100, seed=5, split="held_out")}
    assert train.isdisjoint(held_out)
    assert upper_case_task(10, seed=1) == upper_case_task(10, seed=1)


def test_jsonl_round_trip(tmp_path: Path) -> None:
    rows = upper_case_task(12, seed=0)
    assert read_jsonl(write_jsonl(tmp_path / "train.jsonl", rows)) == rows


def test_order_answers_match_the_sentence_and_the_schema() -> None:
    validator = Draft202012Validator(ORDER_SCHEMA)
    for example in order_task(200, seed=0) + order_task(40, seed=0, split="held_out"):
        user, assistant = example["messages"]
        answer = json.loads(assistant["content"])
        assert validator.is_valid(answer), answer
        assert user["content"] == (
            f"extract: the {answer['who']} takes the {answer['item']} to the {answer['to']}"
        )


def test_order_held_out_cases_are_distinct_and_unseen_in_training() -> None:
    def answer(example: dict) -> str:
        return example["messages"][1]["content"]

    held_out = [answer(example) for example in order_task(89, seed=3, split="held_out")]
    assert len(set(held_out)) == 89
    assert set(held_out).isdisjoint(answer(example) for example in order_task(2000, seed=3))
    assert order_task(10, seed=1) == order_task(10, seed=1)
    with pytest.raises(ValueError, match="89 distinct"):
        order_task(90, split="held_out")
