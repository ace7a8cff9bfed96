"""The OpenAPI document: every operation's error responses, in the shape the handlers send.

FastAPI lists only 2xx and its own 422 shape; clients generated from that, and schemathesis,
would not know evalhub's errors. The statuses come from one place, `errors.STATUS_BY_CODE`,
and the shapes from the models below, which are what `errors.error_response` writes.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from evalhub.api.errors import OPENAI_PREFIX
from evalhub.serving.openai_errors import OpenAIError, OpenAIErrorDetail
from registry.errors import ErrorCode


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str = Field(description="What went wrong and what to do about it.")


class Error(BaseModel):
    """evalhub's error shape, on every route outside /v1."""

    error: ErrorDetail


_WHEN = {
    400: "The request is invalid; the message says which part and why.",
    401: "No API token, or one that is unknown or revoked.",
    403: "The token's role does not allow this.",
    404: "A named resource does not exist.",
    409: "The request conflicts with the current state (it exists, or it is in use).",
    413: "The body is larger than the server accepts.",
    422: "A field has the wrong type, is out of range, or is unknown.",
    500: "An unexpected error; the server log has the details.",
    502: "The backend answered with something that is not a completion.",
    503: "No backend can take the request now.",
    504: "The backend did not answer in time.",
}

_GATEWAY_PATHS = (f"{OPENAI_PREFIX}chat/completions", f"{OPENAI_PREFIX}completions")


def _statuses(path: str, method: str, operation: dict[str, Any]) -> list[int]:
    statuses = [400, 404, 500]
    if operation.get("security"):
        statuses += [401, 403]
    if method != "get":
        statuses += [409, 413]
    if not path.startswith(OPENAI_PREFIX):
        statuses.append(422)  # evalhub's own routes keep FastAPI's 422 for a malformed field
    if path in _GATEWAY_PATHS:
        statuses += [502, 503, 504]
    return sorted(set(statuses))


def _document(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorDetail, Error, OpenAIErrorDetail, OpenAIError):
        components[model.__name__] = model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
    for model in (Error, OpenAIError):
        components.update(components[model.__name__].pop("$defs", {}))
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    for path, item in schema.get("paths", {}).items():
        shape = "OpenAIError" if path.startswith(OPENAI_PREFIX) else "Error"
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's HTTPValidationError: not what is sent
            for status in _statuses(path, method, operation):
                responses[str(status)] = {
                    "description": _WHEN[status],
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}
                    },
                }
    return schema


def install(app: FastAPI) -> None:
    """Replaces `app.openapi` with one that documents the error responses (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
