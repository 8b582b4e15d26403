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


def ambiguous_framing(scope: Scope) -> str | None:
    """What makes the body framing of a request ambiguous, or None when it is not.

    RFC 9112 section 6.1: a request with both ``Transfer-Encoding`` and ``Content-Length``, or with
    ``Transfer-Encoding`` in HTTP/1.0, may be read differently by a proxy in front (request
    smuggling). The HTTP parser already refuses conflicting ``Content-Length`` values (400) and any
    transfer coding other than ``chunked`` (501).
    """
    transfer_encoding = content_length = False
    for name, _ in scope["headers"]:
        if name == b"transfer-encoding":
            transfer_encoding = True
        elif name == b"content-length":
            content_length = True
    if not transfer_encoding:
        return None
    if content_length:
        return "both Transfer-Encoding and Content-Length"
    if scope.get("http_version") == "1.0":
        return "Transfer-Encoding in HTTP/1.0"
    return None


class RequestIdMiddleware:
    """Gives every request an id (the client's ``x-request-id`` when it is a safe token) and puts it
    on every response; refuses a request whose body framing is ambiguous with 400 (and closes the
    connection); turns an unexpected exception into an OpenAI-shaped 500 without details."""

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
        framing = ambiguous_framing(scope)
        if framing is not None:
            from gateway_core.app import wire_for

            error = GatewayError(
                400,
                f"The request has {framing}: its body framing is ambiguous (RFC 9112, section 6.1).",
                code="ambiguous_framing",
                headers={"Connection": "close"},
            )
            await send_error(send, error, wire_for(scope["path"]), request_id)
            return
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
