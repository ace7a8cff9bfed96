"""Checks an OpenAI chat fine-tuning file before any compute is spent on it.

The rules follow OpenAI's data-preparation checker for chat fine-tuning: one JSON object a line with
a `messages` list; known roles and keys only; content a string or a list of text parts (an assistant
may carry tool calls instead); an assistant message in every example; at least ten examples. With a
tokenizer it also counts tokens through the chat template and reports examples longer than the
context, because the trainer would otherwise have to cut them.
"""

from __future__ import annotations

import statistics
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from registry import json_limits

ROLES = ("system", "user", "assistant", "tool")
# `metadata` is evalhub's: provenance (an exported row's request id) that training ignores.
EXAMPLE_KEYS = {"messages", "tools", "functions", "parallel_tool_calls", "metadata"}
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"}
MIN_EXAMPLES = 10


class Issue(BaseModel):
    line: int | None = Field(description="1-based line in the file; None for file-level issues.")
    type: str
    message: str


class TokenStats(BaseModel):
    min: int
    max: int
    mean: float
    median: float
    p95: float
    total: int


class HistogramBin(BaseModel):
    lower: int = Field(description="Inclusive lower bound in tokens.")
    upper: int = Field(description="Exclusive upper bound in tokens.")
    count: int


class ValidationReport(BaseModel):
    path: str
    ok: bool
    n_examples: int
    errors: list[Issue]
    warnings: list[Issue]
    error_counts: dict[str, int]
    warning_counts: dict[str, int]
    max_tokens: int | None = None
    token_stats: TokenStats | None = None
    histogram: list[HistogramBin] = Field(default_factory=list)


def _content_problem(message: dict[str, Any]) -> str | None:
    """Why this message's content is unusable, or None when it is fine."""
    content = message.get("content")
    has_calls = bool(message.get("tool_calls") or message.get("function_call"))
    if content is None:
        if message.get("role") == "assistant" and has_calls:
            return None
        return "content is missing or null (only an assistant message with tool_calls may omit it)"
    if isinstance(content, str):
        return None
    if isinstance(content, list):
        for part in content:
            if not (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                return 'content parts must be objects {"type": "text", "text": "..."}'
        return None
    return f"content must be a string or a list of text parts, not {type(content).__name__}"


def check_example(example: Any) -> list[tuple[str, str]]:
    """(type, message) for every rule one parsed line breaks."""
    if not isinstance(example, dict):
        return [("data_type", f"each line must be a JSON object, not {type(example).__name__}")]
    problems: list[tuple[str, str]] = []
    for key in sorted(set(example) - EXAMPLE_KEYS):
        problems.append(("unrecognized_example_key", f"unknown key {key!r} in the example"))
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.append(("missing_messages_list", "'messages' must be a non-empty list"))
        return problems
    for index, message in enumerate(messages):
        where = f"message {index}"
        if not isinstance(message, dict):
            problems.append(("message_data_type", f"{where} must be an object"))
            continue
        for key in sorted(set(message) - MESSAGE_KEYS):
            problems.append(("message_unrecognized_key", f"{where}: unknown key {key!r}"))
        role = message.get("role")
        if role is None:
            problems.append(("message_missing_key", f"{where}: no 'role'"))
        elif role not in ROLES:
            problems.append(
                ("unrecognized_role", f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
            )
        if "content" not in message and not (
            message.get("tool_calls") or message.get("function_call")
        ):
            problems.append(("message_missing_key", f"{where}: no 'content'"))
        else:
            problem = _content_problem(message)
            if problem:
                problems.append(("missing_content", f"{where}: {problem}"))
        if "weight" in message and (role != "assistant" or message["weight"] not in (0, 1)):
            problems.append(
                (
                    "invalid_weight",
                    f"{where}: 'weight' must be 0 or 1 and only on assistant messages",
                )
            )
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.append(
            ("example_missing_assistant_message", "the example has no assistant message to learn")
        )
    return problems


def count_tokens(tokenizer: Any, messages: list[dict[str, Any]]) -> int:
    """Tokens of the whole conversation as the trainer will see it (chat template applied)."""
    from evalhub.finetune.tokenize import normalize_messages, render

    text = render(tokenizer, normalize_messages(messages), prompt=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def token_histogram(lengths: list[int]) -> list[HistogramBin]:
    """Power-of-two bins (0-16, 16-32, 32-64, ...) up to the longest example."""
    if not lengths:
        return []
    edges = [0, 16]
    while edges[-1] <= max(lengths):
        edges.append(edges[-1] * 2)
    return [
        HistogramBin(lower=low, upper=high, count=sum(low <= n < high for n in lengths))
        for low, high in pairwise(edges)
    ]


def token_stats(lengths: list[int]) -> TokenStats | None:
    if not lengths:
        return None
    ordered = sorted(lengths)
    return TokenStats(
        min=ordered[0],
        max=ordered[-1],
        mean=statistics.fmean(ordered),
        median=statistics.median(ordered),
        p95=ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        total=sum(ordered),
    )


def validate_chat_file(
    path: Path, tokenizer: Any | None = None, max_tokens: int | None = None
) -> ValidationReport:
    """Every problem in the file with its line number; nothing is fixed or dropped here."""
    errors: list[Issue] = []
    warnings: list[Issue] = []
    lengths: list[int] = []
    n_examples = 0
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            n_examples += 1
            try:
                example = json_limits.loads(line)
            except ValueError as error:
                errors.append(Issue(line=line_number, type="invalid_json", message=str(error)))
                continue
            problems = check_example(example)
            errors.extend(
                Issue(line=line_number, type=kind, message=text) for kind, text in problems
            )
            if problems or tokenizer is None:
                continue
            n_tokens = count_tokens(tokenizer, example["messages"])
            lengths.append(n_tokens)
            if max_tokens is not None and n_tokens > max_tokens:
                warnings.append(
                    Issue(
                        line=line_number,
                        type="too_long",
                        message=f"{n_tokens} tokens > max_tokens={max_tokens}: it would be "
                        "truncated; shorten it or train with a longer max_seq_len",
                    )
                )
    if n_examples < MIN_EXAMPLES:
        errors.append(
            Issue(
                line=None,
                type="too_few_examples",
                message=f"{n_examples} examples; fine-tuning needs at least {MIN_EXAMPLES}",
            )
        )
    return ValidationReport(
        path=str(path),
        ok=not errors,
        n_examples=n_examples,
        errors=errors,
        warnings=warnings,
        error_counts=dict(Counter(issue.type for issue in errors)),
        warning_counts=dict(Counter(issue.type for issue in warnings)),
        max_tokens=max_tokens,
        token_stats=token_stats(lengths),
        histogram=token_histogram(lengths),
    )


def format_report(report: ValidationReport, max_issues: int = 20) -> str:
    """Plain text for the CLI: verdict, counts per type, the first issues, token statistics."""
    verdict = "OK" if report.ok else f"FAILED ({len(report.errors)} errors)"
    lines = [f"{report.path}: {report.n_examples} examples, {verdict}"]
    for title, counts, issues in (
        ("errors", report.error_counts, report.errors),
        ("warnings", report.warning_counts, report.warnings),
    ):
        if not issues:
            continue
        lines.append(f"{title} by type:")
        lines += [f"  {kind:<34} {count}" for kind, count in sorted(counts.items())]
        for issue in issues[:max_issues]:
            where = f"line {issue.line}" if issue.line is not None else "file"
            lines.append(f"  {where}: {issue.type}: {issue.message}")
        if len(issues) > max_issues:
            lines.append(f"  ... and {len(issues) - max_issues} more")
    stats = report.token_stats
    if stats is not None:
        lines.append(
            f"tokens per example: min {stats.min}, median {stats.median:g}, mean {stats.mean:.1f}, "
            f"p95 {stats.p95:g}, max {stats.max}; total {stats.total}"
        )
        widest = max(bin.count for bin in report.histogram) or 1
        for bin in report.histogram:
            bar = "#" * round(40 * bin.count / widest)
            lines.append(f"  {bin.lower:>6}-{bin.upper - 1:<6} {bin.count:>6} {bar}")
    return "\n".join(lines)
