"""The dashboard's REST client: httpx to the evalhub API, nothing else.

The dashboard imports nothing from `evalhub` or `registry` (an import-linter contract): it reads
the API's JSON into its own read models (`dashboard.models`), so a page shows what any API user
would see, with the same errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

API = "/api/v1"

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error answer of the API (or no answer), with the message the API gave."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Api:
    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.token = token
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    # -- raw requests ------------------------------------------------------------------------

    def send(self, method: str, url: str, **kwargs: Any) -> Any:
        """Any route of the server: JSON comes back parsed, other bodies as text."""
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.TransportError as error:
            raise ApiError(0, "UNAVAILABLE", f"cannot reach {self.url}: {error}") from error
        if response.status_code >= 400:
            try:
                detail = response.json()["error"]
                code, message = str(detail.get("code")), str(detail["message"])
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ApiError(response.status_code, "HTTP_ERROR", response.text[:500]) from None
            raise ApiError(response.status_code, code, message)
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def get(self, path: str, **params: Any) -> Any:
        """GET under /api/v1; parameters that are None are left out."""
        return self.send("GET", API + path, params=_present(params))

    def post(self, path: str, body: Any = None) -> Any:
        return self.send("POST", API + path, json=body)

    def put(self, path: str, body: Any = None) -> Any:
        return self.send("PUT", API + path, json=body)

    def patch(self, path: str, body: Any = None) -> Any:
        return self.send("PATCH", API + path, json=body)

    def delete(self, path: str, **params: Any) -> Any:
        return self.send("DELETE", API + path, params=_present(params))

    # -- typed reads -------------------------------------------------------------------------

    def one(self, model: type[M], path: str, **params: Any) -> M:
        """One object of the API, read into a dashboard read model."""
        return model.model_validate(self.get(path, **params))

    def many(self, model: type[M], path: str, **params: Any) -> list[M]:
        """A plain JSON list of the API (not a paged envelope)."""
        return TypeAdapter(list[model]).validate_python(self.get(path, **params))  # type: ignore[valid-type]

    def page(
        self,
        model: type[M],
        path: str,
        *,
        limit: int = 50,
        page_token: str | None = None,
        **params: Any,
    ) -> tuple[list[M], str | None]:
        """One page of a paged list and the token of the next page (None at the end): tables
        are paged through the API, never loaded whole."""
        body = self.get(path, limit=limit, page_token=page_token, **params)
        items = TypeAdapter(list[model]).validate_python(body["data"])  # type: ignore[valid-type]
        return items, body.get("next_page_token")

    def every(self, model: type[M], path: str, *, most: int = 1000, **params: Any) -> Iterator[M]:
        """Items of a paged list, following next_page_token, up to `most` of them."""
        token: str | None = None
        seen = 0
        while seen < most:
            items, token = self.page(
                model, path, limit=min(100, most - seen), page_token=token, **params
            )
            yield from items
            seen += len(items)
            if not token:
                return


def _present(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}
