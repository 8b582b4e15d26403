"""Plain ASGI middleware that wraps every HTTP exchange."""

from __future__ import annotations

import logging
import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway_core.errors import GatewayError
from gateway_core.pipeline import REQUEST_ID_KEY, send_error

log = logging.getLogger("lockgate")

_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Gives every request an id (the client's ``x-request-id`` when it is a safe token) and puts it
    on every response; turns an unexpected exception into an OpenAI-shaped 500 without details."""

    def __init__(self, app: ASGIApp, self_tagging: frozenset[str] = frozenset()) -> None:
        self.app = app
        #: Paths whose endpoint puts the id on its responses itself (the model endpoints, for speed).
        self.self_tagging = self_tagging

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _SAFE_ID.match(value):
                request_id = value
                break
        if not request_id:
            request_id = b"req_" + os.urandom(16).hex().encode()
        scope[REQUEST_ID_KEY] = request_id.decode()
        if scope["path"] in self.self_tagging:
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.error("request %s failed: %s: %s", scope[REQUEST_ID_KEY], type(exc).__name__, exc)
            if not started:
                error = GatewayError(500, "The gateway failed to handle the request.", type="server_error")
                from gateway_core.app import wire_for

                await send_error(send_with_id, error, wire_for(scope.get("path", "")))
