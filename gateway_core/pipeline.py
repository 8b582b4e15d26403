"""The request path of the model endpoints: auth, body, routing, policies, provider call, answer.

Endpoints are plain ASGI callables so the pipeline owns the whole exchange: it reads the body once
with a size limit, watches for the client going away (which cancels the upstream call or stream),
answers errors in the client's dialect and settles every request exactly once, whatever happened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from gateway_core.access_log import log_access
from gateway_core.attempts import Attempts, StreamMode, release_attempt
from gateway_core.dlp.engine import DlpSession
from gateway_core.dlp.texts import REQUEST_TEXTS
from gateway_core.errors import GatewayError, upstream_error
from gateway_core.estimates import Relayed, cut_stream_usage
from gateway_core.gateway import Gateway
from gateway_core.providers import ChatStream, CompletedResponse, ProviderCall
from gateway_core.request_body import (
    REQUEST_TIMEOUT,
    ClientDisconnected,
    discard_body,
    parse_json_object,
    read_body,
)
from gateway_core.resilience import HEALTH_FAILURES, classify
from gateway_core.routing import Deployment
from gateway_core.slow_clients import BodyPace
from gateway_core.stream_cap import cap_stream
from gateway_core.types import Dialect, Endpoint, RequestContext, Usage
from gateway_core.validation import validate_chat, validate_embeddings

log = logging.getLogger("lockgate.pipeline")

REQUEST_ID_KEY = "lockgate.request_id"
CLIENT_CLOSED = 499

_JSON_HEADERS = [(b"content-type", b"application/json")]
_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def credential_from(headers: Headers) -> str | None:
    """The API key from ``Authorization: Bearer``, ``X-API-Key`` or ``x-api-key``."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return headers.get("x-api-key") or None


class DisconnectWatch:
    """Cancels the request's task when the client disconnects, once the body has been read.

    After :meth:`stop` a disconnect no longer cancels anything. The watcher task then ends by itself:
    once the response is complete, ``receive()`` answers ``http.disconnect`` (ASGI spec), so it is not
    cancelled (cheaper, and nothing can race a late cancel into a finished request).

    Stop it before sending the last message of an answer: when the server closes the connection after
    it (HTTP/1.0, ``Connection: close``, a worker shutting down), hypercorn announces the disconnect
    while that send is still closing the socket, and a cancel then would hit a complete answer (and be
    swallowed by the server, leaving the request unfinished).
    """

    __slots__ = ("_task", "_watcher", "disconnected", "stopped")

    def __init__(self, receive: Receive) -> None:
        self.disconnected = False
        self.stopped = False
        self._task = asyncio.current_task()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if self.stopped:
            return
        self.disconnected = True
        if self._task is not None:
            self._task.cancel()

    def stop(self) -> None:
        self.stopped = True

    def absorb(self) -> bool:
        """After a CancelledError: True (and the cancel undone) when the client's leaving caused it."""
        if self.disconnected and self._task is not None:
            self._task.uncancel()
            return True
        return False


@dataclass(slots=True)
class Decoded:
    """A client's request as the pipeline needs it."""

    #: The canonical (OpenAI-shaped) body.
    body: dict[str, Any]
    model: str
    stream: bool
    #: The client's bytes are a valid canonical body (same-dialect providers may forward them).
    keep_raw: bool
    #: Set when the request cannot be translated: only a provider speaking the client's dialect
    #: natively may serve it (``body`` is then a skeleton); any other raises this error.
    untranslatable: GatewayError | None = None


class WireFormat:
    """How the model endpoints read requests and write answers for one client dialect.

    The default is OpenAI's, where the canonical form is the wire form: nothing is translated and
    the client's bytes may be forwarded as they are.
    """

    name: Dialect = "openai"

    def decode(self, endpoint: Endpoint, body: dict[str, Any]) -> Decoded:
        """Validate ``body`` (client mistakes raise 400) and bring it to the canonical form."""
        if endpoint == "chat":
            model, stream = validate_chat(body)
            return Decoded(body, model, stream, keep_raw=True)
        return Decoded(body, validate_embeddings(body), False, keep_raw=True)

    def error_body(self, error: GatewayError) -> bytes:
        return error.openai_body()

    def stream_mode(self, stream: ChatStream) -> StreamMode:
        """How :meth:`write_stream` reads ``stream``: its SSE bytes, or its canonical chunks."""
        return "bytes"

    def encode(self, ctx: RequestContext, result: CompletedResponse) -> bytes:
        return result.body

    async def write_stream(
        self, ctx: RequestContext, stream: ChatStream, write: Callable[[bytes], Awaitable[None]]
    ) -> None:
        async for event in stream:
            await write(event)


OPENAI = WireFormat()


async def send_error(
    send: Send,
    error: GatewayError,
    wire: WireFormat = OPENAI,
    request_id: bytes | None = None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = wire.error_body(error)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if request_id is not None:
        headers.append((b"x-request-id", request_id))
    if extra:
        headers += extra
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _context_headers(ctx: RequestContext) -> list[tuple[bytes, bytes]]:
    """``x-lockgate-attempts`` (once a call was made) and the headers policies asked for."""
    out: list[tuple[bytes, bytes]] = []
    if ctx.attempts:
        out.append(
            (
                b"x-lockgate-attempts",
                _ATTEMPTS[ctx.attempts] if ctx.attempts < 10 else str(ctx.attempts).encode(),
            )
        )
    if ctx.response_headers:
        out += [(k.lower().encode(), v.encode()) for k, v in ctx.response_headers.items()]
    return out


_ATTEMPTS = [str(number).encode() for number in range(10)]


def _finish(
    ctx: RequestContext, status: int, error: GatewayError | None, usage: Usage | None, settle: bool
) -> None:
    """Record the outcome once: free the deployment, price the usage, log it, settle policies, count it."""
    if ctx.finished is not None:
        return
    ctx.finished = time.perf_counter()
    ctx.status = status
    ctx.usage = usage
    if error is not None:
        ctx.error_type = error.type
    elif status == CLIENT_CLOSED:
        ctx.error_type = "client_closed_request"
    gateway = ctx.gateway
    deployment = ctx.deployment
    if deployment is not None:
        release_attempt(ctx)
        price = gateway.pricing.price_of(deployment)
        if price is None:
            ctx.price_known = False
        elif usage is not None:
            ctx.cost = price.cost(usage)
        if deployment.needs_settle:
            gateway.spawn(deployment.settle(ctx))
    if gateway.usage_log is not None:
        gateway.usage_log.record(ctx)
    if gateway.access_log:
        log_access(ctx)
    if ctx.trace is not None:
        ctx.trace.finish(ctx)
    if settle and gateway.plugins.has_settle:
        gateway.start_settle(ctx)
    if gateway.metrics.enabled:
        gateway.metrics.record(ctx, error)


async def _chat(deployment: Deployment, call: ProviderCall) -> CompletedResponse | ChatStream:
    return await deployment.provider.chat(call)


async def _embeddings(deployment: Deployment, call: ProviderCall) -> CompletedResponse:
    return await deployment.provider.embeddings(call)


async def _count_tokens(deployment: Deployment, call: ProviderCall) -> CompletedResponse:
    count = await deployment.provider.count_tokens(call)
    return CompletedResponse(orjson.dumps({"input_tokens": count}))


_ENDPOINT_CALLS: dict[
    Endpoint, Callable[[Deployment, ProviderCall], Awaitable[CompletedResponse | ChatStream]]
] = {
    "chat": _chat,
    "embeddings": _embeddings,
    "count_tokens": _count_tokens,
}


class ModelEndpoint:
    """ASGI endpoint for a model call (chat or embeddings) in one client dialect."""

    def __init__(self, gateway: Gateway, endpoint: Endpoint, wire: WireFormat = OPENAI) -> None:
        if (wire.name, endpoint) not in REQUEST_TEXTS:
            # Every model route says where its texts are, so DLP filters it (gateway_core.dlp.texts).
            raise ValueError(f"no DLP walker for {endpoint} requests in the {wire.name} dialect")
        self.gateway = gateway
        self.endpoint: Endpoint = endpoint
        self.wire = wire
        server = gateway.config.server
        self.limit = server.max_body_bytes
        self.pace = BodyPace.of(server)
        self.max_depth = server.max_json_depth
        self.in_flight = gateway.metrics.in_flight if gateway.metrics.enabled else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The request id middleware leaves these responses to the endpoint, which adds the header itself.
        request_id: str = scope.get(REQUEST_ID_KEY, "")
        id_header = (b"x-request-id", request_id.encode())
        if scope["method"] != "POST":
            await self._method_not_allowed(scope, send, id_header[1])
            return
        gateway = self.gateway
        headers = Headers(scope=scope)
        wire = self.wire
        ctx = RequestContext(gateway, request_id, self.endpoint, wire.name, headers)
        if gateway.tracing is not None:
            ctx.trace = gateway.tracing.request(ctx)
        watch: DisconnectWatch | None = None
        settle = False
        body_read = False
        in_flight = self.in_flight
        if in_flight is not None:
            in_flight.inc()
        try:
            await gateway.authenticate(ctx, credential_from(headers))
            raw = await read_body(receive, headers, self.limit, self.pace)
            body_read = True
            client_body = parse_json_object(raw, self.max_depth)
            decoded = wire.decode(self.endpoint, client_body)
            body = ctx.body = decoded.body
            ctx.model, ctx.stream = decoded.model, decoded.stream
            group = await gateway.route(ctx, ctx.model)
            watch = DisconnectWatch(receive)
            settle = True
            if gateway.plugins.has_policies:
                await gateway.check_policies(ctx)
            wire_name = wire.name
            keep_raw = raw if decoded.keep_raw else None
            dlp = gateway.dlp.session(ctx) if gateway.dlp is not None else None
            if dlp is not None and await dlp.filter_request(wire_name, self.endpoint, client_body):
                keep_raw = None  # the client's bytes hold what the filters took out
                if wire is not OPENAI:  # the OpenAI dialect's canonical body is the client's, filtered
                    decoded = wire.decode(self.endpoint, client_body)
                    body = ctx.body = decoded.body
            native_body = None if wire is OPENAI else client_body

            def make_call(deployment: Deployment) -> ProviderCall:
                if (
                    decoded.untranslatable is not None
                    and wire_name not in deployment.provider.native_dialects
                ):
                    raise decoded.untranslatable
                return ProviderCall(ctx, body, keep_raw, deployment.upstream_model, native_body)

            policy = gateway.resilience.for_group(group.name)
            attempts = Attempts(ctx, make_call, _ENDPOINT_CALLS[self.endpoint], wire.stream_mode, policy)
            result = await attempts.serve(group, policy)
            deployment = ctx.deployment
            assert deployment is not None
            if isinstance(result, CompletedResponse):
                if dlp is not None:
                    ctx.usage = result.usage  # used even when the answer is blocked
                    result = await dlp.filter_response(result)
                answer = wire.encode(ctx, result)
                watch.stop()  # the answer is complete: the client's leaving no longer changes it
                _finish(ctx, 200, None, result.usage, settle)
                response_headers = [
                    *_JSON_HEADERS,
                    (b"content-length", str(len(answer)).encode()),
                    (b"x-lockgate-deployment", deployment.header_value),
                    id_header,
                ]
                response_headers += [(k.encode(), v.encode()) for k, v in result.headers.items()]
                response_headers += _context_headers(ctx)
                await send({"type": "http.response.start", "status": 200, "headers": response_headers})
                await send({"type": "http.response.body", "body": answer})
            else:
                await self._relay(ctx, result, send, settle, id_header, watch, dlp)
        except GatewayError as error:
            _finish(ctx, error.status, error, ctx.usage, settle)
            if body_read or error.status == REQUEST_TIMEOUT or await self._drain(receive, headers):
                extra = _context_headers(ctx)
                if ctx.deployment is not None:
                    extra.append((b"x-lockgate-deployment", ctx.deployment.header_value))
                await send_error(send, error, wire, id_header[1], extra)
        except ClientDisconnected:
            pass
        except asyncio.CancelledError:
            _finish(ctx, CLIENT_CLOSED, None, ctx.usage, settle)
            if watch is None or not watch.absorb():
                raise
        except Exception as exc:
            log.error("request %s failed: %s: %s", ctx.request_id, type(exc).__name__, exc)
            internal = upstream_error(
                "The gateway failed to handle the request.", status=500, code="internal_error"
            )
            _finish(ctx, 500, internal, None, settle)
            if ctx.first_byte is None:
                await send_error(send, internal, wire, id_header[1])
        finally:
            if watch is not None:
                watch.stop()
            if ctx.finished is None and settle:  # ended by a cancel that something swallowed
                _finish(ctx, CLIENT_CLOSED, None, ctx.usage, settle)
            if ctx.trace is not None and ctx.finished is None:  # the client left before anything
                ctx.status = ctx.status or CLIENT_CLOSED
                ctx.trace.finish(ctx)
            if in_flight is not None:
                in_flight.dec()

    async def _drain(self, receive: Receive, headers: Headers) -> bool:
        """Before an early answer, drop the unread body (up to a bound) so the client reads the answer."""
        declared = headers.get("content-length")
        bound = max(self.limit, 1 << 20)
        if declared is not None and declared.isdigit() and int(declared) > bound:
            return True  # far too large to read: answer now and let the connection close
        return await discard_body(receive, bound)

    async def _method_not_allowed(self, scope: Scope, send: Send, request_id: bytes) -> None:
        error = GatewayError(
            405,
            f"Method {scope['method']} is not allowed for {scope['path']}.",
            code="method_not_allowed",
            headers={"Allow": "POST"},
        )
        await send_error(send, error, self.wire, request_id)

    async def _relay(
        self,
        ctx: RequestContext,
        stream: ChatStream,
        send: Send,
        settle: bool,
        id_header: tuple[bytes, bytes],
        watch: DisconnectWatch,
        dlp: DlpSession | None,
    ) -> None:
        stream = cap_stream(ctx, stream)
        if dlp is not None:  # outside the cap, so the cap's ending releases what DLP holds back
            stream = dlp.stream(stream)
        headers = [*_STREAM_HEADERS, id_header]
        if ctx.deployment is not None:
            headers.append((b"x-lockgate-deployment", ctx.deployment.header_value))
        headers += [(k.encode(), v.encode()) for k, v in stream.headers.items()]
        headers += _context_headers(ctx)

        relayed = Relayed()  # for the usage of a stream cut short: counted, never parsed, on the way

        async def write(event: bytes) -> None:
            if ctx.first_byte is None:
                ctx.first_byte = time.perf_counter()
            relayed.size += len(event)
            relayed.last = event
            await send({"type": "http.response.body", "body": event, "more_body": True})

        complete = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await self.wire.write_stream(ctx, stream, write)
            watch.stop()  # see DisconnectWatch: the answer is complete once this send is made
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            complete = True
        finally:
            stream.close()
            # A cancel leaves ctx.finished unset here; the caller records the client's leaving.
            if complete or not _current_task_cancelling():
                error = stream.error
                if error is not None and ctx.deployment is not None:
                    failure = classify(error)
                    if failure in HEALTH_FAILURES:  # broke mid-stream: too late to retry, not to count
                        ctx.gateway.health.failure(ctx.deployment, str(failure), None)
                _finish(ctx, error.status if error else 200, error, stream.usage, settle)
            else:
                ctx.usage = cut_stream_usage(ctx.body, stream.usage, relayed)


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
