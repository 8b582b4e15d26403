"""Operational routes: liveness, readiness and the plugin list."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway_core.gateway import Gateway
from gateway_core.routes import authenticate_request


async def health(request: Request) -> Response:
    """Liveness: the process answers."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    """Readiness: start-up finished and at least one model can be served (see ``Gateway.readiness``)."""
    gateway: Gateway = request.app.state.gateway
    is_ready, body = gateway.readiness()
    return Response(orjson.dumps(body), status_code=200 if is_ready else 503, media_type="application/json")


async def plugins(request: Request) -> Response:
    """Loaded plugins with versions and hooks; needs a valid API key."""
    gateway: Gateway = request.app.state.gateway
    await authenticate_request(request)
    return Response(orjson.dumps(gateway.plugins.describe()), media_type="application/json")
