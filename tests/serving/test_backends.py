"""Managed vLLM backends start the command the settings name, and a failed start leaves nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from evalhub.platform import Platform
from evalhub.serving.backends import BackendCreate, BackendService
from evalhub.serving.supervisor import Supervisor
from evalhub.settings import Settings
from registry.errors import RegistryError


def test_the_vllm_command_is_a_setting(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    # A Python and entry point of the user's choosing: here one that prints its arguments and
    # exits with 3.
    settings = Settings(
        home=tmp_path / "home",
        _env_file=None,
        vllm_python=sys.executable,
        vllm_command=["-c", "import sys; print(sys.argv[1:], flush=True); sys.exit(3)"],
    )
    platform = Platform.open(settings)
    supervisor = Supervisor(tmp_path / "logs")
    try:
        platform.registry.create_model("tiny", "base")
        platform.registry.register_version("tiny", model_dirs["base"])
        backends = BackendService(platform, supervisor)
        with pytest.raises(RegistryError, match="exited with status 3"):
            backends.create(BackendCreate(name="gpu-1", kind="vllm", base="tiny/1"), actor="t")
        assert backends.list() == []
        started_with = (tmp_path / "logs" / "gpu-1-0.log").read_text()
        assert (
            "'--enable-lora'" in started_with and "'--served-model-name', 'tiny/1'" in started_with
        )
    finally:
        supervisor.close()
        platform.close()


@pytest.mark.parametrize(
    "args",
    [
        ["--trust-remote-code"],
        ["--chat-template", "/etc/passwd"],
        ["--tokenizer=/srv/other-model"],
        ["--dtype", "../../x"],
        ["--max-model-len"],
    ],
)
def test_a_request_cannot_hand_vllm_paths_or_remote_code(
    tmp_path: Path, model_dirs: dict[str, Path], args: object
) -> None:
    # The command would record that it ran; a refused request must start nothing.
    ran = tmp_path / "ran"
    settings = Settings(
        home=tmp_path / "home",
        _env_file=None,
        vllm_python=sys.executable,
        vllm_command=["-c", f"open({str(ran)!r}, 'w').write('ran')"],
    )
    platform = Platform.open(settings)
    supervisor = Supervisor(tmp_path / "logs")
    try:
        platform.registry.create_model("tiny", "base")
        platform.registry.register_version("tiny", model_dirs["base"])
        backends = BackendService(platform, supervisor)
        body = BackendCreate(name="gpu-1", kind="vllm", base="tiny/1", options={"args": args})
        with pytest.raises(RegistryError, match=r"options\.args|not one a request may set|plain"):
            backends.create(body, actor="t")
        assert backends.list() == [] and not ran.exists()
    finally:
        supervisor.close()
        platform.close()


def test_sizes_and_switches_are_accepted() -> None:
    from evalhub.serving.supervisor import check_vllm_args

    args = ["--dtype", "float32", "--max-model-len=256", "--enforce-eager", "--seed", "7"]
    assert check_vllm_args(args) == args
    with pytest.raises(ValidationError):
        BackendCreate(name="b", base="tiny/1", options={"args": "--trust-remote-code"})
    with pytest.raises(ValidationError):
        BackendCreate(name="b", base="tiny/1", options={"port": "abc"})


def gpu_settings(tmp_path: Path, gpus: list[int] | None) -> Settings:
    """vLLM replaced by a Python that prints its GPUs and arguments, then exits with 3 (no GPU
    here: this checks what each replica would be started with)."""
    report = "import os, sys; print('GPUS', os.environ.get('CUDA_VISIBLE_DEVICES'), sys.argv[1:])"
    return Settings(
        home=tmp_path / "home",
        _env_file=None,
        vllm_python=sys.executable,
        vllm_command=["-c", f"{report}; sys.exit(3)"],
        vllm_gpus=gpus,
    )


def test_replicas_take_disjoint_gpus_of_tensor_parallel_size(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    from evalhub.serving.supervisor import replica_gpus

    assert replica_gpus([0, 1, 2, 3], 2, 2) == ["0,1", "2,3"]
    assert replica_gpus(None, 4, 2) == [None, None]
    platform = Platform.open(gpu_settings(tmp_path, [4, 5, 6, 7]))
    supervisor = Supervisor(tmp_path / "logs")
    try:
        platform.registry.create_model("tiny", "base")
        platform.registry.register_version("tiny", model_dirs["base"])
        backends = BackendService(platform, supervisor)
        args = ["--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.85"]
        body = BackendCreate(
            name="gpu", kind="vllm", base="tiny/1", replicas=2, options={"args": args}
        )
        with pytest.raises(RegistryError, match="exited with status 3"):
            backends.create(body, actor="t")
        started = (tmp_path / "logs" / "gpu-0.log").read_text()
        # The operator's arguments first, the request's after them (vLLM takes the later flag).
        assert "GPUS 4,5 [" in started and "'--dtype', 'float32'" in started
        assert started.index("'--dtype'") < started.index("'--tensor-parallel-size', '2'")

        # Three replicas of two GPUs need six: refused before any process starts.
        (tmp_path / "logs" / "gpu-0.log").unlink()
        three = body.model_copy(update={"replicas": 3})
        with pytest.raises(RegistryError, match="need 6 GPUs; EVALHUB_VLLM_GPUS lists 4"):
            backends.create(three, actor="t")
        assert not (tmp_path / "logs" / "gpu-0.log").exists() and backends.list() == []
    finally:
        supervisor.close()
        platform.close()


def test_a_bad_parallel_size_is_refused() -> None:
    from evalhub.serving.supervisor import gpus_per_replica

    assert gpus_per_replica(["--tensor-parallel-size=2", "--pipeline-parallel-size", "2"]) == 4
    assert gpus_per_replica(["--dtype", "auto"]) == 1
    with pytest.raises(RegistryError, match="positive integer"):
        gpus_per_replica(["--tensor-parallel-size", "0"])
