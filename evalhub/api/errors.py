"""One table from domain error codes to HTTP statuses, and handlers that answer in one JSON shape.

Two shapes, chosen by path: the OpenAI-compatible routes under /v1 answer as OpenAI does,
`{"error": {"message", "type", "param", "code"}}`, so that its clients raise their usual errors;
everything else answers evalhub's `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from evalhub.serving.openai_errors import openai_error_response
from registry.errors import ErrorCode, RegistryError

OPENAI_PREFIX = "/v1/"

log = logging.getLogger(__name__)

STATUS_BY_CODE: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.CONFLICT: 409,
    ErrorCode.FAILED_PRECONDITION: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.INTERNAL: 500,
}

CODE_BY_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.INVALID_ARGUMENT,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.PERMISSION_DENIED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.INVALID_ARGUMENT,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.TOO_LARGE,
    422: ErrorCode.INVALID_ARGUMENT,
}


def error_body(code: ErrorCode | str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": str(code), "message": message}}


def error_response(
    status: int,
    code: ErrorCode | str,
    message: str,
    *,
    request: Request | None = None,
    param: str | None = None,
) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if request is not None and request.url.path.startswith(OPENAI_PREFIX):
        code = str(code).lower()
        return openai_error_response(status, message, code=code, param=param, headers=headers)
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _field(location: tuple[Any, ...] | list[Any]) -> str | None:
    """`("body", "hyperparameters", "n_epochs")` -> "hyperparameters.n_epochs"."""
    parts = [str(part) for part in location if part not in ("body", "query", "path", "form")]
    return ".".join(parts) or None


def _invalid_status(request: Request) -> int:
    """OpenAI answers a malformed request with 400; evalhub's own API keeps FastAPI's 422."""
    return 400 if request.url.path.startswith(OPENAI_PREFIX) else 422


def install(app: FastAPI) -> None:
    @app.exception_handler(RegistryError)
    async def _registry_error(request: Request, error: RegistryError) -> JSONResponse:
        status = STATUS_BY_CODE.get(error.code, 500)
        param = getattr(error, "param", None)
        return error_response(status, error.code, error.message, request=request, param=param)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        items = error.errors()
        problems = "; ".join(
            f"{_field(item.get('loc', ())) or 'request'}: {item.get('msg')}" for item in items
        )
        status = _invalid_status(request)
        param = _field(items[0].get("loc", ())) if items else None
        return error_response(
            status, ErrorCode.INVALID_ARGUMENT, problems or "invalid request",
            request=request, param=param,
        )  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = CODE_BY_STATUS.get(error.status_code, ErrorCode.INTERNAL)
        response = error_response(error.status_code, code, str(error.detail), request=request)
        if error.headers:
            response.headers.update(error.headers)  # `Allow` on 405
        return response

    # Below the routes: a model built from request data, a value the database will not hold, a
    # number or document past what Python handles. Bad input all, never a 500.
    @app.exception_handler(ValidationError)
    async def _model_error(request: Request, error: ValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{_field(item.get('loc', ())) or 'value'}: {item.get('msg')}"
            for item in error.errors()
        )
        return error_response(
            _invalid_status(request), ErrorCode.INVALID_ARGUMENT, problems, request=request
        )

    @app.exception_handler(DataError)
    async def _data_error(request: Request, error: DataError) -> JSONResponse:
        reason = str(error.orig).splitlines()[0] if error.orig is not None else "out of range"
        message = f"a value does not fit its field ({reason}); send a shorter or smaller one"
        return error_response(
            _invalid_status(request), ErrorCode.INVALID_ARGUMENT, message, request=request
        )

    @app.exception_handler(OverflowError)
    @app.exception_handler(RecursionError)
    async def _too_big(request: Request, error: Exception) -> JSONResponse:
        message = f"a value is too large or nested too deep: {error}"
        return error_response(
            _invalid_status(request), ErrorCode.INVALID_ARGUMENT, message, request=request
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return error_response(
            500, ErrorCode.INTERNAL, "internal error; the server log has the details",
            request=request,
        )  # fmt: skip
