"""One table from domain error codes to HTTP statuses, and handlers that answer in one JSON shape."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.errors import ErrorCode, RegistryError

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


def error_response(status: int, code: ErrorCode | str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(RegistryError)
    async def _registry_error(_request: Request, error: RegistryError) -> JSONResponse:
        return error_response(STATUS_BY_CODE.get(error.code, 500), error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', ()))}: {item.get('msg')}"
            for item in error.errors()
        )
        return error_response(422, ErrorCode.INVALID_ARGUMENT, problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = CODE_BY_STATUS.get(error.status_code, ErrorCode.INTERNAL)
        return error_response(error.status_code, code, str(error.detail))
