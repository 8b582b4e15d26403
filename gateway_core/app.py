"""The Starlette application: core routes, plugin routes, error rendering and life cycle."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Iterable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from gateway_core.config import GatewayConfig
from gateway_core.errors import ConfigError, GatewayError
from gateway_core.gateway import Gateway
from gateway_core.middleware import RequestIdMiddleware
from gateway_core.pipeline import OPENAI, ModelEndpoint, WireFormat
from gateway_core.routes import meta, openai
from gateway_core.routes.messages import ANTHROPIC

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def wire_for(path: str) -> WireFormat:
    """The client dialect of a path, for errors raised outside the model endpoints (404, 405, ...)."""
    return ANTHROPIC if path.startswith("/v1/messages") else OPENAI


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    body = wire_for(request.url.path).error_body(exc)
    return Response(body, status_code=exc.status, headers=exc.headers, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    else:
        message = str(exc.detail)
    error = GatewayError(
        exc.status_code, message, code=_HTTP_CODES.get(exc.status_code), headers=exc.headers or None
    )
    return await _gateway_error(request, error)


def create_app(
    config: GatewayConfig | Gateway,
    *,
    extra_plugins: Iterable[tuple[str, object]] = (),
    freeze_gc: bool = False,
) -> Starlette:
    """Build the ASGI application for one worker from a configuration (or a ready ``Gateway``)."""
    gateway = config if isinstance(config, Gateway) else Gateway(config, extra_plugins=extra_plugins)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not gateway.ready:  # ``serve`` starts it before binding, so start-up errors read plainly
            await gateway.start()
            if freeze_gc:  # a server worker: start-up objects live as long as the process
                gc.freeze()
        try:
            yield
        finally:
            await gateway.stop()

    # The model endpoints answer every method themselves (405 in the client's dialect) and put the
    # request id on their responses, so the middleware need not wrap them.
    model_endpoints = {
        "/v1/chat/completions": ModelEndpoint(gateway, "chat"),
        "/v1/embeddings": ModelEndpoint(gateway, "embeddings"),
        "/v1/messages": ModelEndpoint(gateway, "chat", ANTHROPIC),
        "/v1/messages/count_tokens": ModelEndpoint(gateway, "count_tokens", ANTHROPIC),
    }
    routes = [
        *(Route(path, endpoint) for path, endpoint in model_endpoints.items()),
        Route("/v1/models", openai.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", openai.retrieve_model, methods=["GET"]),
        Route("/health", meta.health, methods=["GET"]),
        Route("/ready", meta.ready, methods=["GET"]),
        Route("/-/plugins", meta.plugins, methods=["GET"]),
        # Not a model endpoint: scrapes are not counted in the request metrics.
        Route("/metrics", meta.metrics, methods=["GET"]),
    ]
    taken = {route.path for route in routes}
    for extra in gateway.extra_routes:
        if extra.path in taken:
            raise ConfigError(f"a plugin route shadows the core route {extra.path}")
        routes.append(Route(extra.path, extra.endpoint, methods=list(extra.methods), name=extra.name))
    from gateway_core.admin import create_admin_app  # the admin API: its own routes, off the /v1 path

    app = Starlette(
        routes=[*routes, Mount("/admin", app=create_admin_app(gateway))],
        middleware=[Middleware(RequestIdMiddleware, self_tagging=frozenset(model_endpoints))],
        exception_handlers={GatewayError: _gateway_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
