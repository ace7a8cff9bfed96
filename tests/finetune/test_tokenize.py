from __future__ import annotations

import pytest

from evalhub.finetune.tokenize import (
    IGNORE_INDEX,
    SequenceTooLongError,
    pack,
    tokenize_chat,
    tokenize_dataset,
)

EXAMPLE = [
    {"role": "system", "content": "answer in capitals"},
    {"role": "user", "content": "upper: cat dog bird"},
    {"role": "assistant", "content": "CAT DOG BIRD"},
]


def labelled_text(tokenizer, example) -> str:
    return tokenizer.decode([label for label in example.labels if label != IGNORE_INDEX])


def test_loss_only_on_the_assistant_answer_and_its_eos(tiny_tokenizer) -> None:
    tokenized = tokenize_chat(tiny_tokenizer, EXAMPLE)
    assert labelled_text(tiny_tokenizer, tokenized) == "CAT DOG BIRD<|eos|>"
    assert tokenized.labels[-1] == tiny_tokenizer.eos_token_id
    prompt_length = len(
        tiny_tokenizer(
            tiny_tokenizer.apply_chat_template(
                EXAMPLE[:2], tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        )["input_ids"]
    )
    assert all(label == IGNORE_INDEX for label in tokenized.labels[:prompt_length])
    assert tokenized.labels[prompt_length:] == tokenized.input_ids[prompt_length:]


def test_every_assistant_turn_is_learned_unless_weight_zero(tiny_tokenizer) -> None:
    messages = [
        {"role": "user", "content": "upper: cat"},
        {"role": "assistant", "content": "CAT", "weight": 0},
        {"role": "user", "content": "upper: dog"},
        {"role": "assistant", "content": "DOG"},
    ]
    assert labelled_text(tiny_tokenizer, tokenize_chat(tiny_tokenizer, messages)) == "DOG<|eos|>"
    messages[1].pop("weight")
    assert (
        labelled_text(tiny_tokenizer, tokenize_chat(tiny_tokenizer, messages))
        == "CAT<|eos|>DOG<|eos|>"
    )


def test_long_examples_are_reported_never_cut_silently(tiny_tokenizer) -> None:
    examples = [{"messages": EXAMPLE}, {"messages": EXAMPLE[1:]}]
    full = tokenize_chat(tiny_tokenizer, EXAMPLE).n_tokens
    truncated = tokenize_dataset(tiny_tokenizer, examples, max_seq_len=full - 2)
    assert truncated.truncated_indices == [0]
    assert truncated.examples[0].truncated and truncated.examples[0].n_tokens == full - 2
    dropped = tokenize_dataset(tiny_tokenizer, examples, max_seq_len=full - 2, on_overflow="drop")
    assert dropped.dropped_indices == [0] and len(dropped.examples) == 1
    with pytest.raises(SequenceTooLongError, match="example 0"):
        tokenize_dataset(tiny_tokenizer, examples, max_seq_len=full - 2, on_overflow="error")


def test_packing_keeps_every_token_and_label(tiny_tokenizer) -> None:
    data = tokenize_dataset(tiny_tokenizer, [{"messages": EXAMPLE}] * 5).examples
    packed = pack(data, seq_len=32)
    assert all(example.n_tokens == 32 for example in packed[:-1])
    assert [t for e in packed for t in e.input_ids] == [t for e in data for t in e.input_ids]
    assert [t for e in packed for t in e.labels] == [t for e in data for t in e.labels]
