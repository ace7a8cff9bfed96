"""evalhub's fine-tuning helpers: estimate, validate, and jobs read as experiment runs.

The OpenAI-compatible jobs and files API lives under /v1 (evalhub.api.openai).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from pydantic import BaseModel, Field

from evalhub.api.deps import PlatformDep, Viewer
from evalhub.api.routes.uploads import uploaded_file
from evalhub.finetune.data import ValidationReport, validate_chat_file
from evalhub.finetune.estimate import estimate
from evalhub.finetune.runs import RunComparison, RunMetrics, compare_jobs, run_metrics
from evalhub.finetune.service import _tokenizer, context_length, resolve_base
from registry.errors import invalid

router = APIRouter(prefix="/finetune", tags=["fine-tuning"])


class EstimateRequest(BaseModel):
    model: str = Field(description="A model reference (name, name/3, name@alias)")
    method: str = "lora"
    rank: int = Field(default=16, gt=0, le=4096)
    target_modules: str | list[str] = "all-linear"
    include_lm_head: bool = True
    batch_size: int = Field(default=1, gt=0, le=65_536)
    seq_len: int = Field(default=512, gt=0, le=1_048_576)
    dtype: str = "bfloat16"
    gradient_checkpointing: bool = False


class EstimateResponse(BaseModel):
    model: str
    config: dict[str, Any]
    estimate: dict[str, Any]


@router.post("/estimate")
def estimate_memory(body: EstimateRequest, platform: PlatformDep, _: Viewer) -> EstimateResponse:
    version = resolve_base(platform, body.model)
    config = json.loads((platform.registry.model_path(version.ref) / "config.json").read_text())
    try:
        result = estimate(
            config,
            body.method,
            rank=body.rank,
            target_modules=body.target_modules,
            include_lm_head=body.include_lm_head,
            batch_size=body.batch_size,
            seq_len=body.seq_len,
            dtype=body.dtype,
            gradient_checkpointing=body.gradient_checkpointing,
        )
    except (ValueError, TypeError, ZeroDivisionError) as error:
        raise invalid(str(error)) from None
    return EstimateResponse(model=version.ref, config=config, estimate=result.model_dump())


@router.post("/validate")
def validate_file(
    platform: PlatformDep,
    _: Viewer,
    file: Annotated[UploadFile, File(description="A JSONL file of chat examples")],
    model: Annotated[str, Form(description="Base model whose tokenizer counts tokens")],
    max_tokens: Annotated[int | None, Form()] = None,
) -> ValidationReport:
    version = resolve_base(platform, model)
    model_dir = platform.registry.model_path(version.ref)
    limit = max_tokens or context_length(model_dir)
    with uploaded_file(platform, file) as path:
        try:
            report = validate_chat_file(path, _tokenizer(str(model_dir)), max_tokens=limit)
        except UnicodeDecodeError:
            raise invalid(f"{file.filename} is not UTF-8 text (JSONL)") from None
    return report.model_copy(update={"path": file.filename or "upload"})


@router.get("/runs/compare")
def compare_fine_tuning_runs(
    platform: PlatformDep,
    _: Viewer,
    job: Annotated[list[str], Query(description="Two or more fine-tuning job ids")],
) -> RunComparison:
    """Runs side by side: their parameters (and which differ), final and summary metrics."""
    return compare_jobs(platform, job)


@router.get("/runs/{job_id}/metrics")
def get_fine_tuning_run_metrics(job_id: str, platform: PlatformDep, _: Viewer) -> RunMetrics:
    """A job's parameters and metric series (loss, validation loss, learning rate, speed, memory)."""
    return run_metrics(platform, job_id)
