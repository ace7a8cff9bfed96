"""The OpenAI API at /v1: models, chat completions and completions, routed by the gateway.

`model` is a deployment name (routed to an arm by weight, sticky per user) or a model reference
(`bot@production`, `bot/3`, `ft:...`) served directly.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from evalhub.api.deps import PlatformDep, Viewer
from evalhub.serving.gateway import MAX_MODEL_CHARS, MAX_USER_CHARS, Gateway, GatewayError
from registry import json_limits

router = APIRouter(prefix="/v1", tags=["gateway"])


def _request_body(required: str, prompt: dict[str, Any]) -> dict[str, Any]:
    """The body as OpenAI documents it, in brief; the backend checks the sampling fields."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["model", required],
                        "properties": {
                            "model": {
                                "type": "string",
                                "maxLength": MAX_MODEL_CHARS,
                                "description": "a deployment or a model reference",
                            },
                            required: prompt,
                            "user": {"type": "string", "maxLength": MAX_USER_CHARS},
                            "stream": {"type": "boolean"},
                            "max_tokens": {"type": "integer", "minimum": 1},
                            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                        },
                    }
                }
            },
        }
    }


_MESSAGES = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
    },
}
_PROMPT = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json_limits.loads(await request.body())
    except ValueError as error:
        raise GatewayError(
            400, f"the body is not JSON: {error}", "invalid_request_error", "invalid_json"
        ) from error
    if not isinstance(body, dict):
        raise GatewayError(
            400, "the body must be a JSON object", "invalid_request_error", "invalid_body"
        )
    return body


async def _handle(request: Request, endpoint: str) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        body = await _body(request)
    except GatewayError as error:
        return error.response()
    return await gateway.handle(endpoint, body, request.headers)


@router.post("/chat/completions", openapi_extra=_request_body("messages", _MESSAGES))
async def create_chat_completion(request: Request, _: Viewer) -> Response:
    return await _handle(request, "chat/completions")


@router.post("/completions", openapi_extra=_request_body("prompt", _PROMPT))
async def create_completion(request: Request, _: Viewer) -> Response:
    return await _handle(request, "completions")


@router.get("/models")
def list_gateway_models(platform: PlatformDep, request: Request, _: Viewer) -> dict[str, Any]:
    """Deployments, and each registered model's aliases that a backend can serve."""
    gateway: Gateway = request.app.state.gateway
    served_bases = {backend.base_digest for backend in gateway.backends.list()}
    data = [
        {
            "id": d.name,
            "object": "model",
            "created": int(d.created_at.timestamp()),
            "owned_by": "evalhub",
        }
        for d in gateway.deployments.list()
    ]
    for model in platform.registry.search_models(limit=1000).data:
        for alias in sorted(model.aliases):
            version = platform.registry.resolve(f"{model.name}@{alias}")
            base = version.digest if version.base_digest is None else version.base_digest
            if base in served_bases:
                data.append(
                    {
                        "id": f"{model.name}@{alias}",
                        "object": "model",
                        "created": int(version.created_at.timestamp()),
                        "owned_by": "evalhub",
                        "root": version.ref,
                        "parent": version.base,
                    }
                )
    return {"object": "list", "data": data}
