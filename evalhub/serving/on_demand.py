"""Backends on demand: on the embedded default, a request for a version whose base no backend
serves starts a managed local backend for that base, and answers once it is healthy.

The backend is created through `BackendService.create`, the path `evalhub backend local` and
`POST /api/v1/backends` take, so it is registered, audited, supervised, listed and stopped with
the server like any other. Concurrent first requests share one start; a failed start is
remembered for a while, so a broken base does not cost a process start on every request.
"""

from __future__ import annotations

import asyncio
import logging
import time

from evalhub.serving.backends import Backend, BackendCreate, BackendService
from evalhub.serving.gateway_errors import GatewayError, unavailable
from registry.errors import RegistryError

log = logging.getLogger(__name__)

ACTOR = "gateway:on-demand"


def backend_name(base_model: str, base_version: int) -> str:
    """The predictable name of the backend started on demand for `base_model/base_version`."""
    return f"auto-{base_model}-{base_version}"


class NoBackend(GatewayError):
    """No backend serves the base (ref and digest) a request needs: the 503, with what to start."""

    def __init__(self, message: str, base_ref: str, base_digest: str) -> None:
        refusal = unavailable(message)
        super().__init__(refusal.status, refusal.message, refusal.type, refusal.code)
        self.base_ref = base_ref
        self.base_digest = base_digest


class OnDemandBackends:
    def __init__(self, backends: BackendService, *, retry_seconds: float) -> None:
        self.backends = backends
        self.retry_seconds = retry_seconds
        self._starting: dict[str, asyncio.Future[Backend]] = {}
        self._failed: dict[str, tuple[float, GatewayError]] = {}

    async def ensure(self, missing: NoBackend) -> Backend:
        """A healthy backend for the missing base: started now, or by the start already running.

        Raises the start's 503 (remembered for `retry_seconds`) when it cannot start.
        """
        key = missing.base_digest
        failed = self._failed.get(key)
        if failed is not None:
            if time.monotonic() < failed[0]:
                raise failed[1]
            del self._failed[key]
        pending = self._starting.get(key)
        if pending is None:
            pending = self._starting[key] = asyncio.ensure_future(self._start(missing))
        return await asyncio.shield(pending)

    async def _start(self, missing: NoBackend) -> Backend:
        try:
            return await asyncio.to_thread(self._create, missing.base_ref, missing.base_digest)
        except RegistryError as error:
            refusal = unavailable(
                f"no backend serves {missing.base_ref} and starting one on demand failed: "
                f"{error.message}; retried after {self.retry_seconds:.0f} s, or add one with "
                f"'evalhub backend local --base {missing.base_ref}'"
            )
            self._failed[missing.base_digest] = (time.monotonic() + self.retry_seconds, refusal)
            raise refusal from error
        finally:
            self._starting.pop(missing.base_digest, None)

    def _create(self, base_ref: str, base_digest: str) -> Backend:
        # Another process on the same home may have started one meanwhile.
        for backend in self.backends.list():
            if backend.base_digest == base_digest:
                return backend
        base = self.backends.platform.registry.resolve(base_ref)
        name = backend_name(base.model, base.version)
        started = time.monotonic()
        log.info("no backend serves %s; starting %s on demand", base.ref, name)
        backend = self.backends.create(
            BackendCreate(name=name, kind="local", base=base.ref), actor=ACTOR
        )
        log.info("started %s for %s in %.1f s", name, base.ref, time.monotonic() - started)
        return backend
