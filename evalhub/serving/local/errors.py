"""One serving error carrying an HTTP status, rendered in the OpenAI error shape by the servers."""

from __future__ import annotations

# The error `type` strings vLLM puts in its OpenAI-format errors; clients that read them keep working.
ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


class ServingError(Exception):
    """Raised by engines for anything a request asked that cannot be served; `message` says why."""

    def __init__(self, status_code: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param

    @property
    def error_type(self) -> str:
        return ERROR_TYPES.get(self.status_code, "InternalServerError")

    def __repr__(self) -> str:
        return f"ServingError({self.status_code}, {self.message!r})"


def bad_request(message: str, param: str | None = None) -> ServingError:
    return ServingError(400, message, param)


def not_found(message: str, param: str | None = None) -> ServingError:
    return ServingError(404, message, param)


def model_not_found(model: str) -> ServingError:
    """The exact message vLLM and OpenAI give, so clients matching on it behave the same."""
    return not_found(f"The model `{model}` does not exist.", "model")
