"""Starts backend server processes, waits for their health, and restarts any that die."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from registry.errors import ErrorCode, RegistryError

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ProcessSpec:
    """How to run one backend: the command line, extra environment, and where it listens."""

    name: str
    command: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    health_timeout: float = 120.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def local_backend_spec(name: str, model_dir: Path, served_name: str, port: int) -> ProcessSpec:
    command = [
        sys.executable, "-m", "evalhub.serving.local.server",
        "--model", str(model_dir), "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    return ProcessSpec(name=name, command=command, port=port, env={"OMP_NUM_THREADS": "1"})


# vLLM options an API caller may set on a managed backend: sizes and switches. Anything that names
# a file, a tokenizer, a chat template or remote code stays with the operator (EVALHUB_VLLM_ARGS).
VLLM_VALUE_FLAGS = frozenset({
    "--dtype", "--max-model-len", "--gpu-memory-utilization", "--tensor-parallel-size",
    "--pipeline-parallel-size", "--max-num-seqs", "--max-num-batched-tokens", "--kv-cache-dtype",
    "--block-size", "--swap-space", "--seed", "--quantization", "--cpu-offload-gb", "--lora-dtype",
})  # fmt: skip
VLLM_SWITCHES = frozenset({
    "--enforce-eager", "--enable-prefix-caching", "--no-enable-prefix-caching",
    "--enable-chunked-prefill", "--no-enable-chunked-prefill", "--disable-log-stats",
})  # fmt: skip
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_+:][A-Za-z0-9_.+:-]{0,63}")


def check_vllm_args(args: object) -> list[str]:
    """The vLLM arguments a request asked for, when every one is a size or a switch we allow."""
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise RegistryError(
            ErrorCode.INVALID_ARGUMENT,
            "options.args is a list of strings, e.g. ['--dtype', 'auto']",
        )
    remaining = list(args)
    while remaining:
        flag, _, inline = remaining.pop(0).partition("=")
        if flag in VLLM_SWITCHES and not inline:
            continue
        if flag not in VLLM_VALUE_FLAGS:
            allowed = ", ".join(sorted(VLLM_VALUE_FLAGS | VLLM_SWITCHES))
            raise RegistryError(
                ErrorCode.INVALID_ARGUMENT,
                f"vLLM argument {flag!r} is not one a request may set (allowed: {allowed}); "
                "the operator sets any other in EVALHUB_VLLM_ARGS",
            )
        value = inline or (remaining.pop(0) if remaining else "")
        if not _PLAIN_VALUE.fullmatch(value):
            raise RegistryError(
                ErrorCode.INVALID_ARGUMENT,
                f"vLLM argument {flag} needs a plain value (a number or a word), not {value!r}",
            )
    return list(args)


def gpus_per_replica(args: list[str]) -> int:
    """The GPUs one vLLM process uses: its tensor parallel size times its pipeline parallel size."""
    sizes = {"--tensor-parallel-size": 1, "--pipeline-parallel-size": 1}
    for index, arg in enumerate(args):
        flag, _, inline = arg.partition("=")
        if flag in sizes:
            value = inline or (args[index + 1] if index + 1 < len(args) else "")
            if not value.isdigit() or int(value) < 1:
                raise RegistryError(
                    ErrorCode.INVALID_ARGUMENT, f"vLLM argument {flag} takes a positive integer"
                )
            sizes[flag] = int(value)
    return sizes["--tensor-parallel-size"] * sizes["--pipeline-parallel-size"]


def replica_gpus(gpus: list[int] | None, per_replica: int, replicas: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each replica: consecutive, disjoint slices of `gpus`, so that
    replicas do not share a device; None for each where `gpus` is not set."""
    if gpus is None:
        return [None] * replicas
    needed = per_replica * replicas
    if needed > len(gpus):
        raise RegistryError(
            ErrorCode.INVALID_ARGUMENT,
            f"{replicas} replica(s) of {per_replica} GPU(s) each need {needed} GPUs; "
            f"EVALHUB_VLLM_GPUS lists {len(gpus)} ({gpus})",
        )
    slices = (gpus[i * per_replica : (i + 1) * per_replica] for i in range(replicas))
    return [",".join(str(gpu) for gpu in part) for part in slices]


def vllm_backend_spec(
    name: str,
    model_dir: Path,
    served_name: str,
    port: int,
    *,
    python: str,
    entrypoint: list[str],
    max_loras: int,
    max_lora_rank: int,
    max_cpu_loras: int,
    extra_args: list[str],
    gpus: str | None = None,
) -> ProcessSpec:
    command = [
        python, *entrypoint,
        "--model", str(model_dir), "--served-model-name", served_name,
        "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank),
        "--max-cpu-loras", str(max_cpu_loras),
        "--host", "127.0.0.1", "--port", str(port), *extra_args,
    ]  # fmt: skip
    env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "HF_HUB_OFFLINE": "1",
        # GiB of KV cache on CPU builds; the default (4) is more than small machines spare.
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    return ProcessSpec(name=name, command=command, port=port, env=env, health_timeout=300.0)


def wait_healthy(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    root = url.removesuffix("/v1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RegistryError(
                ErrorCode.FAILED_PRECONDITION,
                f"backend process exited with status {process.returncode} before it was healthy",
            )
        try:
            if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RegistryError(
        ErrorCode.FAILED_PRECONDITION, f"backend at {url} not healthy in {timeout:.0f} s"
    )


@dataclass
class _Managed:
    spec: ProcessSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    restarts: int = 0


class Supervisor:
    """Owns the managed backend processes of one evalhub server."""

    def __init__(self, log_dir: Path, check_seconds: float = 2.0) -> None:
        self.log_dir = log_dir
        self.check_seconds = check_seconds
        self._managed: dict[str, _Managed] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="backend-supervisor", daemon=True)
        self._thread.start()

    def start(self, spec: ProcessSpec) -> str:
        """Starts the process and returns its URL once it answers /health."""
        with self._lock:
            if spec.name in self._managed:
                self._terminate(self._managed.pop(spec.name))
        managed = self._spawn(spec)
        try:
            wait_healthy(spec.url, spec.health_timeout, managed.process)
        except RegistryError as error:
            self._terminate(managed)
            tail = _tail(managed.log_path)
            raise RegistryError(error.code, f"{error.message}; log: {tail}") from error
        with self._lock:
            self._managed[spec.name] = managed
        return spec.url

    def stop(self, name: str) -> None:
        with self._lock:
            managed = self._managed.pop(name, None)
        if managed is not None:
            self._terminate(managed)

    def pid(self, name: str) -> int | None:
        managed = self._managed.get(name)
        return managed.process.pid if managed is not None else None

    def restarts(self, name: str) -> int:
        managed = self._managed.get(name)
        return managed.restarts if managed is not None else 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        with self._lock:
            managed, self._managed = list(self._managed.values()), {}
        for item in managed:
            self._terminate(item)

    def _spawn(self, spec: ProcessSpec) -> _Managed:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                spec.command,
                env={**os.environ, **spec.env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return _Managed(spec=spec, process=process, log_path=log_path)

    def _watch(self) -> None:
        while not self._stop.wait(self.check_seconds):
            with self._lock:
                dead = [m for m in self._managed.values() if m.process.poll() is not None]
            for managed in dead:
                log.warning(
                    "backend %s exited with %s; restarting",
                    managed.spec.name,
                    managed.process.returncode,
                )
                replacement = self._spawn(managed.spec)
                replacement.restarts = managed.restarts + 1
                with self._lock:
                    if self._managed.get(managed.spec.name) is managed:
                        self._managed[managed.spec.name] = replacement
                    else:  # stopped meanwhile
                        self._terminate(replacement)

    @staticmethod
    def _terminate(managed: _Managed) -> None:
        if managed.process.poll() is None:
            managed.process.terminate()
            try:
                managed.process.wait(15)
            except subprocess.TimeoutExpired:
                managed.process.kill()
                managed.process.wait(5)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
