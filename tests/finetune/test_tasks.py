from __future__ import annotations

from pathlib import Path

from evalhub.finetune.tasks import read_jsonl, upper_case_task, write_jsonl


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
