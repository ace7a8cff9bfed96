"""A case is one JSONL line of a dataset: the input, what is expected, and how to slice it."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# `{name}` is a placeholder, `{{` and `}}` are literal braces; any other brace stays as written so
# that prompts holding JSON examples need no escaping.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Message(BaseModel):
    """One chat message in OpenAI format."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class Case(BaseModel):
    """One evaluation example."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str
    messages: list[Message] | None = None
    input: str | None = None
    expected: Any = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    vars: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _id_as_string(cls, data: Any) -> Any:
        # Datasets often number their cases; ids are compared as strings everywhere.
        if isinstance(data, dict) and isinstance(data.get("id"), int):
            data = {**data, "id": str(data["id"])}
        return data

    @model_validator(mode="after")
    def _has_input(self) -> Case:
        if self.messages is None and self.input is None:
            raise ValueError("a case needs `messages` or `input`")
        return self

    @property
    def expected_text(self) -> str:
        """The expected answer as text: strings as they are, JSON values serialised."""
        if self.expected is None:
            return ""
        if isinstance(self.expected, str):
            return self.expected
        return json.dumps(self.expected, ensure_ascii=False, sort_keys=True)


def fill_placeholders(template: str, values: dict[str, Any]) -> str:
    """Replace `{name}` with values[name]; an unknown name is an error, not a silent blank."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = match.group(1)
        if name not in values:
            known = ", ".join(sorted(values)) or "none"
            raise KeyError(f"placeholder {{{name}}} has no value (known: {known})")
        value = values[name]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _PLACEHOLDER.sub(replace, template)


def render_messages(
    case: Case, template: list[Message] | None, suite_vars: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The exact chat messages sent for a case.

    A case's own `messages` win; otherwise the suite's template is filled from the suite vars,
    the case vars and the case fields; with neither, `input` becomes a single user message.
    """
    if case.messages is not None:
        return [message.model_dump(exclude_none=True) for message in case.messages]
    if not template:
        return [{"role": "user", "content": case.input or ""}]
    values: dict[str, Any] = {**(suite_vars or {}), **case.vars}
    values.update(
        id=case.id,
        input=case.input or "",
        expected=case.expected_text,
        tags=", ".join(case.tags),
    )
    rendered = []
    for message in template:
        data = message.model_dump(exclude_none=True)
        data["content"] = fill_placeholders(message.content, values)
        rendered.append(data)
    return rendered
