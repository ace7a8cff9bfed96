"""The gateway's refusals, in OpenAI's error format, and the request checks that raise them."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from evalhub.serving.openai_errors import openai_error_response

# OpenAI's limits for a model id and an end-user id; longer ones are refused, not clipped.
MAX_MODEL_CHARS = 256
MAX_USER_CHARS = 256


class GatewayError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return openai_error_response(
            self.status,
            self.message,
            type=self.type,
            code=self.code,
            param=self.param,
            headers=headers,
        )


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


def unavailable(message: str) -> GatewayError:
    return GatewayError(503, message, "service_unavailable", "backend_unavailable")


def invalid_request(message: str, code: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param)


def not_loadable(message: str) -> GatewayError:
    """The arm's adapter was refused by its backend: another arm may still answer."""
    return GatewayError(400, message, "invalid_request_error", "adapter_not_loadable")


def check_lengths(model: str, user: Any) -> GatewayError | None:
    """OpenAI refuses over-long ids with a 400 naming the parameter; so does the gateway."""
    if len(model) > MAX_MODEL_CHARS:
        return invalid_request(
            f"model is {len(model)} characters long; the most is {MAX_MODEL_CHARS}",
            "string_above_max_length",
            "model",
        )
    if user is not None and not isinstance(user, str):
        return invalid_request("user must be a string", "invalid_type", "user")
    if user is not None and len(user) > MAX_USER_CHARS:
        return invalid_request(
            f"user is {len(user)} characters long; the most is {MAX_USER_CHARS}",
            "string_above_max_length",
            "user",
        )
    return None
