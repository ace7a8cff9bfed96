"""Fine-tuning methods by name: add a method by adding a module that calls `register_method` once."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

OutputKind = Literal["adapter", "model"]
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*$")


class MethodError(ValueError):
    """A method name or its options are wrong; the message says how to fix it."""


@dataclass(frozen=True)
class Method:
    """How one fine-tuning method prepares a model and what it produces.

    `apply` turns the loaded base into the model to train; `output` says whether the result is a PEFT
    adapter directory or a full model directory; `load_kwargs` adds arguments to `from_pretrained`
    (quantisation must happen at load time); `make_optimizer` replaces the default AdamW.
    """

    name: str
    options_type: type[BaseModel]
    apply: Callable[[Any, Any], Any]
    output: OutputKind
    description: str
    load_kwargs: Callable[[Any], dict[str, Any]] | None = None
    make_optimizer: Callable[..., Any] | None = None

    def parse_options(self, options: Mapping[str, Any] | BaseModel | None = None) -> Any:
        """Validate options, turning pydantic's errors into one message that names each field."""
        if isinstance(options, self.options_type):
            return options
        raw = options.model_dump() if isinstance(options, BaseModel) else dict(options or {})
        try:
            return self.options_type.model_validate(raw)
        except ValidationError as error:
            problems = []
            for item in error.errors():
                field = ".".join(str(part) for part in item["loc"]) or "options"
                message = item["msg"].removeprefix("Value error, ")
                problems.append(f"{field}: {message}")
            summary = "; ".join(problems)
            raise MethodError(f"invalid options for method {self.name!r}: {summary}") from None


_METHODS: dict[str, Method] = {}


def register_method(
    name: str,
    *,
    options_type: type[BaseModel],
    apply: Callable[[Any, Any], Any],
    output: OutputKind,
    description: str,
    load_kwargs: Callable[[Any], dict[str, Any]] | None = None,
    make_optimizer: Callable[..., Any] | None = None,
) -> Method:
    """Add a method; a taken or malformed name is refused rather than silently replaced."""
    if not NAME_PATTERN.match(name):
        raise MethodError(
            f"method name {name!r} is not valid: use lower-case letters, digits, '-' or '_', "
            "starting with a letter"
        )
    if name in _METHODS:
        raise MethodError(
            f"method {name!r} is already registered (options {_METHODS[name].options_type.__name__}"
            f"); choose another name or call unregister_method({name!r}) first"
        )
    if output not in ("adapter", "model"):
        raise MethodError(f"method {name!r}: output must be 'adapter' or 'model', not {output!r}")
    method = Method(name, options_type, apply, output, description, load_kwargs, make_optimizer)
    _METHODS[name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method (tests and plugins that replace a built-in on purpose)."""
    _METHODS.pop(name, None)


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS)) or "none"
        raise MethodError(f"unknown fine-tuning method {name!r}; known methods: {known}") from None


def method_names() -> list[str]:
    return sorted(_METHODS)
