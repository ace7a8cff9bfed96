"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`: one model and one
renderer for the gateway, the API's OpenAI-compatible routes and the local backend, so that the
`openai` client raises its usual exceptions from any of them."""

from __future__ import annotations

from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

# OpenAI's error `type` per HTTP status.
TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="e.g. invalid_request_error, authentication_error.")
    param: str | None = None
    code: int | str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error shape, on the OpenAI-compatible routes under /v1."""

    error: OpenAIErrorDetail


def error_type(status: int) -> str:
    return TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


def openai_error_response(
    status: int,
    message: str,
    *,
    type: str | None = None,
    code: int | str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    detail = OpenAIErrorDetail(
        message=message, type=type or error_type(status), param=param, code=code
    )
    return JSONResponse(OpenAIError(error=detail).model_dump(), status_code=status, headers=headers)
