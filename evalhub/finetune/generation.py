"""Greedy answers and exact match, enough to show in tests that fine-tuning learned something.

The evaluation engine (evalhub.eval) is the real thing; this stays small on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalhub.finetune.tokenize import encode_prompt


def expected_answer(example: dict[str, Any]) -> str:
    """The last assistant message: what the model should say after the preceding turns."""
    messages = example["messages"]
    last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    return str(messages[last]["content"] or "")


def prompt_messages(example: dict[str, Any]) -> list[dict[str, Any]]:
    messages = example["messages"]
    last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    return messages[:last]


def generate_answers(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, Any]]],
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> list[str]:
    """Greedy completion of each conversation after the assistant header, left-padded batches."""
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    answers: list[str] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(conversations), batch_size):
        prompts = [encode_prompt(tokenizer, c) for c in conversations[start : start + batch_size]]
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt) :] = 1
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=pad_id,
            )
        for row in output[:, width:]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    model.train(was_training)
    return answers


def evaluate_exact_match(
    model: Path | tuple[Any, Any],
    examples: Sequence[dict[str, Any]],
    max_new_tokens: int = 32,
    *,
    base_model: Path | None = None,
    batch_size: int = 32,
) -> float:
    """Share of examples whose greedy answer equals the reference (whitespace-stripped)."""
    from evalhub.finetune.loading import load_model

    loaded_model, tokenizer = (
        load_model(Path(model), base_model) if isinstance(model, (str, Path)) else model
    )
    answers = generate_answers(
        loaded_model,
        tokenizer,
        [prompt_messages(example) for example in examples],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    hits = sum(
        answer == expected_answer(example).strip()
        for answer, example in zip(answers, examples, strict=True)
    )
    return hits / len(examples) if examples else 0.0
