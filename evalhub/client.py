"""The REST client the CLI uses: a real server at EVALHUB_URL, or the same app in-process."""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

import httpx

from evalhub.settings import Settings

API = "/api/v1"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _ProgressReader:
    """A file wrapper that reports bytes as httpx reads them, for upload progress bars."""

    def __init__(self, handle: IO[bytes], progress: Callable[[int], None] | None) -> None:
        self._handle = handle
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        if chunk and self._progress:
            self._progress(len(chunk))
        return chunk


class Client:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    @classmethod
    @contextmanager
    def connect(cls, settings: Settings | None = None, *, worker: bool = False) -> Iterator[Client]:
        """A client of EVALHUB_URL's server, or in-process of the local home; there `worker` runs
        a job worker in the app, sharing its queue, so a job submitted is claimed at once."""
        settings = settings or Settings()
        if settings.url:
            headers = {}
            if settings.token is not None:
                headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
            with httpx.Client(base_url=settings.url, headers=headers, timeout=600) as http:
                yield cls(http)
            return
        # In-process: the same app and routes, acting as the local user on their own home.
        from fastapi.testclient import TestClient

        from evalhub.api.app import create_app
        from evalhub.auth.tokens import Principal, Role

        principal = Principal(name=f"local:{getpass.getuser()}", role=Role.ADMIN)
        app = create_app(settings, local_principal=principal, run_worker=worker)
        with TestClient(app, base_url="http://evalhub.local", raise_server_exceptions=True) as http:
            # starlette's TestClient is an httpx2.Client: httpx's interface, another class.
            yield cls(cast(httpx.Client, http))

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request to the REST API under /api/v1."""
        return self.send(method, API + path, **kwargs)

    def send(self, method: str, url: str, **kwargs: Any) -> Any:
        """Any route of the server; an error answer in either shape (evalhub's or OpenAI's)
        becomes an ApiError."""
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.TransportError as error:
            raise ApiError(
                0, "UNAVAILABLE", f"cannot reach {self.http.base_url}: {error}"
            ) from error
        if response.status_code >= 400:
            try:
                detail = response.json()["error"]
                code, message = str(detail.get("code")), str(detail["message"])
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ApiError(response.status_code, "HTTP_ERROR", response.text[:500]) from None
            raise ApiError(response.status_code, code, message)
        if response.status_code == 204 or not response.content:
            return None
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if media_type == "application/json":  # not application/jsonl: a dataset's bytes
            return response.json()
        return response.content

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, json=body)

    def patch(self, path: str, body: Any = None) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request(
            "DELETE", path, params={k: v for k, v in params.items() if v is not None}
        )

    def upload(
        self,
        path: str,
        file: Path,
        fields: dict[str, str | None],
        progress: Callable[[int], None] | None = None,
    ) -> Any:
        with file.open("rb") as handle:
            files = {"file": (file.name, _ProgressReader(handle, progress))}
            data = {k: v for k, v in fields.items() if v is not None}
            return self.request("POST", path, files=files, data=data)

    def paged(self, path: str, **params: Any) -> Iterator[Any]:
        """Every item of a paged list, following next_page_token."""
        token = None
        while True:
            page = self.get(path, page_token=token, **params)
            yield from page["data"]
            token = page.get("next_page_token")
            if not token:
                return
