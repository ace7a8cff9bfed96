"""A domain error that also names the request field at fault (OpenAI's error `param`)."""

from __future__ import annotations

from pydantic import ValidationError

from registry.errors import ErrorCode, RegistryError


class ParamError(RegistryError):
    """Raised by the fine-tuning service; the API reports `param` alongside the message."""

    def __init__(self, code: ErrorCode, message: str, param: str | None = None) -> None:
        super().__init__(code, message)
        self.param = param


def bad_param(param: str | None, message: str) -> ParamError:
    return ParamError(ErrorCode.INVALID_ARGUMENT, message, param)


def missing(param: str | None, message: str) -> ParamError:
    return ParamError(ErrorCode.NOT_FOUND, message, param)


def problems(error: ValidationError) -> str:
    """pydantic's errors as one line: `field: message; ...` (a whole-model check has no field)."""
    return "; ".join(
        ": ".join(
            part
            for part in (
                ".".join(str(p) for p in item["loc"]),
                item["msg"].removeprefix("Value error, "),
            )
            if part
        )
        for item in error.errors()
    )
