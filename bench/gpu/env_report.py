"""The machine and the Python stack the GPU benchmarks ran on: nvidia-smi, library versions, whether
bitsandbytes, galore-torch and evalhub import (and bitsandbytes' 4-bit kernels run), plus two
ceilings that help read the other numbers: a bf16 matrix product's rate and one GaLore-sized SVD.
Exits 1 when evalhub's fine-tuning or serving modules do not import (the other parts would fail).

  python bench/gpu/env_report.py      # writes $OUT/env.json
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any

import gpubench
from gpubench import log

DISTRIBUTIONS = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "tokenizers",
    "safetensors",
    "numpy",
    "pydantic",
    "pydantic-core",
    "typing-extensions",
    "bitsandbytes",
    "galore-torch",
)
MODULES = (
    "bitsandbytes",
    "galore_torch",
    "pydantic",
    "evalhub.finetune.trainer",
    "evalhub.serving.local.engine",
)


def nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi not found"
    result = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30, check=False)
    return result.stdout + result.stderr


def versions() -> dict[str, str]:
    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def imports() -> dict[str, str]:
    """'ok (path)' or the error for each module the benchmarks need."""
    results = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
            results[name] = f"ok ({getattr(module, '__file__', '?')})"
        except Exception as error:
            results[name] = f"{type(error).__name__}: {error}"
            if not (isinstance(error, ModuleNotFoundError) and error.name == name):
                gpubench.error_record(error)  # broken, not just absent: keep the traceback
    return results


def cuda_checks() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
    }
    if not torch.cuda.is_available():
        return info
    properties = torch.cuda.get_device_properties(0)
    info |= {
        "device": properties.name,
        "capability": list(torch.cuda.get_device_capability(0)),
        "total_memory_gib": round(properties.total_memory / gpubench.GIB, 1),
        "multiprocessors": properties.multi_processor_count,
        "bf16_supported": torch.cuda.is_bf16_supported(),
    }
    # A large bf16 product on random data: the matrix-rate ceiling the tokens/s sit under.
    size = 8192
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    info["bf16_matmul_tflops"] = round(2 * size**3 * 10 / (start.elapsed_time(end) / 1e3) / 1e12)
    del a, b
    # GaLore's first step runs one SVD like this per targeted weight (the MLP's are the largest).
    chosen = gpubench.profile()
    gradient = torch.randn(chosen.intermediate_size, chosen.hidden_size, device="cuda")
    torch.linalg.svd(gradient[:256, :256], full_matrices=False)
    torch.cuda.synchronize()
    started = time.perf_counter()
    torch.linalg.svd(gradient, full_matrices=False)
    torch.cuda.synchronize()
    info["svd_shape"] = list(gradient.shape)
    info["svd_fp32_seconds"] = round(time.perf_counter() - started, 3)
    del gradient
    torch.cuda.empty_cache()
    return info


def bitsandbytes_check() -> str:
    """A 4-bit NF4 round trip on the GPU: the kernels qlora needs load and run."""
    import torch

    if not torch.cuda.is_available():
        return "skipped: needs CUDA"
    try:
        import bitsandbytes.functional as functional
    except Exception as error:
        return f"not importable: {type(error).__name__}: {error}"
    try:
        weight = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
        packed, state = functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
        restored = functional.dequantize_4bit(packed, state, quant_type="nf4")
        error = float((restored.float() - weight.float()).norm() / weight.float().norm())
        return f"ok: NF4 round trip relative error {error:.3f} (about 0.1 expected)"
    except Exception as error:
        gpubench.error_record(error)
        return f"failed: {type(error).__name__}: {error}"


def main() -> None:
    started = time.perf_counter()
    report: dict[str, Any] = {
        "profile": gpubench.profile().name,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "wheels": os.environ.get("EVALHUB_GPU_WHEELS", "not reported"),
        "versions": versions(),
        "imports": imports(),
    }
    for key, check in (("cuda", cuda_checks), ("bitsandbytes_4bit", bitsandbytes_check)):
        try:
            report[key] = check()
        except Exception as error:
            report[key] = gpubench.error_record(error)
    report["nvidia_smi"] = nvidia_smi()
    report["seconds"] = round(time.perf_counter() - started, 2)
    gpubench.write_json(gpubench.out_dir() / "env.json", report)
    log(report["nvidia_smi"].strip())
    log(f"python {report['python']} at {report['executable']}")
    log("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    for name, status in report["imports"].items():
        log(f"import {name}: {status}")
    log(f"cuda: {report['cuda']}")
    log(f"bitsandbytes 4-bit: {report['bitsandbytes_4bit']}")
    failed = [name for name, status in report["imports"].items() if not status.startswith("ok")]
    broken = [name for name in failed if name.startswith("evalhub")]
    cuda = report["cuda"]
    log(
        "result: "
        + (f"{cuda.get('device')}, " if cuda.get("available") else "no CUDA, ")
        + f"torch {report['versions']['torch']}, "
        + ("bitsandbytes ok" if "bitsandbytes" not in failed else "no bitsandbytes")
        + (f"; evalhub does not import: {', '.join(broken)}" if broken else "")
    )
    if broken:
        sys.exit(1)


if __name__ == "__main__":
    main()
