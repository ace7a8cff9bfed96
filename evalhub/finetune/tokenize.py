"""Chat examples to token ids with loss only on what the assistant says.

The loss mask comes from rendering the conversation with the model's own chat template, once up to
each assistant turn (with the generation prompt) and once through it: the characters in between are
the assistant's answer plus whatever closes the turn (the eos), and the tokens covering them are the
only ones with labels. This works with any template that renders earlier turns the same way whatever
follows them; a template that does not is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

IGNORE_INDEX = -100

OverflowPolicy = Literal["truncate", "drop", "error"]


class ChatTokenizer(Protocol):
    """The part of a Hugging Face fast tokenizer used here."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class TokenizedDataset:
    """Tokenised examples plus what happened to the long ones, so callers can report it."""

    examples: list[TokenizedExample]
    max_seq_len: int | None
    truncated_indices: list[int] = field(default_factory=list)
    dropped_indices: list[int] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(example.n_tokens for example in self.examples)


class SequenceTooLongError(ValueError):
    """An example exceeds max_seq_len and the policy says to stop."""


def normalize_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn list-of-parts content into plain strings and drop training-only keys for templates."""
    normalized = []
    for message in messages:
        item = {key: value for key, value in message.items() if key != "weight"}
        content = item.get("content")
        if isinstance(content, list):
            item["content"] = "".join(
                part.get("text", "") for part in content if isinstance(part, dict)
            )
        elif content is None:
            item["content"] = ""
        normalized.append(item)
    return normalized


def render(tokenizer: ChatTokenizer, messages: Sequence[dict[str, Any]], *, prompt: bool) -> str:
    """The chat template as text; `prompt` adds the generation prompt (the assistant header)."""
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=prompt
    )
    assert isinstance(text, str)
    return text


def encode_prompt(tokenizer: ChatTokenizer, messages: Sequence[dict[str, Any]]) -> list[int]:
    """Token ids of a conversation followed by the assistant header, ready for generation."""
    text = render(tokenizer, normalize_messages(messages), prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def assistant_char_spans(
    tokenizer: ChatTokenizer, messages: Sequence[dict[str, Any]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry loss."""
    normalized = normalize_messages(messages)
    full_text = render(tokenizer, normalized, prompt=False)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        before = render(tokenizer, normalized[:index], prompt=True)
        through = render(tokenizer, normalized[: index + 1], prompt=False)
        if not (through.startswith(before) and full_text.startswith(through)):
            raise ValueError(
                "the chat template renders earlier turns differently depending on what follows, "
                "so assistant tokens cannot be located; use a template without such rewriting"
            )
        spans.append((len(before), len(through)))
    return full_text, spans


def tokenize_chat(
    tokenizer: ChatTokenizer,
    messages: Sequence[dict[str, Any]],
    max_seq_len: int | None = None,
) -> TokenizedExample:
    """Token ids and labels (IGNORE_INDEX outside assistant turns); cut to max_seq_len if longer."""
    text, spans = assistant_char_spans(tokenizer, messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for position, (start, end) in enumerate(encoding["offset_mapping"]):
        if end > start and any(low <= start < high for low, high in spans):
            labels[position] = input_ids[position]
    truncated = max_seq_len is not None and len(input_ids) > max_seq_len
    if truncated:
        input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
    return TokenizedExample(input_ids=input_ids, labels=labels, truncated=truncated)


def tokenize_dataset(
    tokenizer: ChatTokenizer,
    examples: Iterable[dict[str, Any]],
    max_seq_len: int | None = None,
    on_overflow: OverflowPolicy = "truncate",
) -> TokenizedDataset:
    """Tokenise examples; long ones are truncated, dropped or refused, and always listed."""
    result = TokenizedDataset(examples=[], max_seq_len=max_seq_len)
    for index, example in enumerate(examples):
        tokenized = tokenize_chat(tokenizer, example["messages"], max_seq_len)
        if tokenized.truncated:
            if on_overflow == "error":
                raise SequenceTooLongError(
                    f"example {index} is longer than max_seq_len={max_seq_len}; raise "
                    "max_seq_len, shorten the example, or choose on_overflow='truncate'/'drop'"
                )
            if on_overflow == "drop":
                result.dropped_indices.append(index)
                continue
            result.truncated_indices.append(index)
        result.examples.append(tokenized)
    return result


def pack(examples: Sequence[TokenizedExample], seq_len: int) -> list[TokenizedExample]:
    """Concatenate examples into sequences of exactly seq_len tokens (the last may be shorter).

    Packing wastes no compute on padding; attention then crosses example boundaries, the usual
    trade-off of packed fine-tuning.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for example in examples:
        input_ids.extend(example.input_ids)
        labels.extend(example.labels)
    return [
        TokenizedExample(input_ids[start : start + seq_len], labels[start : start + seq_len])
        for start in range(0, len(input_ids), seq_len)
    ]
