"""HTTP routes of the gateway."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from gateway_core.types import Principal, RequestContext


@dataclass(frozen=True, slots=True)
class ExtraRoute:
    """A route a plugin adds through ``lockgate_register_routes``."""

    path: str
    endpoint: Callable[[Request], Awaitable[Response]]
    methods: Sequence[str] = ("GET",)
    name: str | None = None


async def authenticate_request(request: Request) -> Principal:
    """Run the auth hooks for a plain Starlette endpoint; raises 401/403 ``GatewayError``."""
    from gateway_core.pipeline import REQUEST_ID_KEY, credential_from

    gateway = request.app.state.gateway
    ctx = RequestContext(gateway, request.scope.get(REQUEST_ID_KEY, ""), "chat", "openai", request.headers)
    principal: Principal = await gateway.authenticate(ctx, credential_from(request.headers))
    return principal
