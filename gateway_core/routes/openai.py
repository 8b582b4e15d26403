"""The OpenAI-compatible model listing; chat and embeddings are pipeline endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway_core.errors import model_not_found
from gateway_core.gateway import Gateway
from gateway_core.routes import authenticate_request
from gateway_core.routing import ModelGroup


def _model_object(name: str, group: ModelGroup) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": group.created, "owned_by": group.owned_by}


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    principal = await authenticate_request(request)
    data = [
        _model_object(name, group)
        for name, group in gateway.models.items()
        if principal.may_use(name) or principal.may_use(group.name)
    ]
    return _json({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    principal = await authenticate_request(request)
    model = request.path_params["model"]
    group = gateway.models.get(model)
    if group is None or not (principal.may_use(model) or principal.may_use(group.name)):
        raise model_not_found(model)
    return _json(_model_object(model, group))
