"""Operational routes: liveness, readiness, the plugin list and the Prometheus metrics."""

from __future__ import annotations

import asyncio

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway_core.errors import GatewayError
from gateway_core.gateway import Gateway
from gateway_core.metrics import CONTENT_TYPE
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


async def metrics(request: Request) -> Response:
    """Prometheus metrics of every worker (``metrics.auth: bearer`` asks for the scrapers' token)."""
    gateway: Gateway = request.app.state.gateway
    metrics = gateway.metrics
    if not metrics.enabled:
        raise GatewayError(404, "Metrics are disabled (metrics.enabled: false).", code="not_found")
    if not metrics.authorized(request.headers.get("authorization")):
        raise GatewayError(
            401,
            "Scraping the metrics needs the bearer token of metrics.token.",
            code="invalid_metrics_token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if metrics.multiprocess_dir is None:
        body = metrics.exposition()
    else:  # reads every worker's files
        body = await asyncio.to_thread(metrics.exposition)
    return Response(body, headers={"content-type": CONTENT_TYPE})
