"""OpenAI-compatible routes under /v1 (files and fine-tuning jobs); errors in OpenAI's shape."""

from __future__ import annotations

from fastapi import APIRouter

from evalhub.api.openai import files, fine_tuning

OPENAI_PREFIX = "/v1"

router = APIRouter(prefix=OPENAI_PREFIX)
router.include_router(files.router)
router.include_router(fine_tuning.router)

__all__ = ["OPENAI_PREFIX", "router"]
