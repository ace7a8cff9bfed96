"""One domain error with a symbolic code; the API maps codes to HTTP statuses in one table."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    CONFLICT = "CONFLICT"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    TOO_LARGE = "TOO_LARGE"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    INTERNAL = "INTERNAL"


class RegistryError(Exception):
    """Raised for anything a caller did wrong or asked for that cannot be; `message` says what to do."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"RegistryError({self.code.value}, {self.message!r})"


def not_found(message: str) -> RegistryError:
    return RegistryError(ErrorCode.NOT_FOUND, message)


def invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID_ARGUMENT, message)


def conflict(message: str) -> RegistryError:
    return RegistryError(ErrorCode.CONFLICT, message)


def already_exists(message: str) -> RegistryError:
    return RegistryError(ErrorCode.ALREADY_EXISTS, message)
