"""The OpenAI API at /v1: models, chat completions and completions, routed by the gateway.

`model` is a deployment name (routed to an arm by weight, sticky per user) or a model reference
(`bot@production`, `bot/3`, `ft:...`) served directly.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from evalhub.api.deps import PlatformDep, Viewer
from evalhub.serving.gateway import Gateway, GatewayError
from registry import json_limits

router = APIRouter(prefix="/v1", tags=["gateway"])


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


@router.post("/chat/completions")
async def create_chat_completion(request: Request, _: Viewer) -> Response:
    return await _handle(request, "chat/completions")


@router.post("/completions")
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
