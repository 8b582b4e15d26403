"""Reading a request's body: the size limit (413), the pace a slow client must keep (408), the media
type (415), dropping the rest of a body answered early, and parsing it as a JSON object (400).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.types import Receive

from gateway_core.errors import GatewayError, bad_request
from gateway_core.json_depth import DEFAULT_MAX_DEPTH, json_too_deep
from gateway_core.slow_clients import BodyPace

#: The status of a request whose body arrived too slowly.
REQUEST_TIMEOUT = 408


class ClientDisconnected(Exception):
    """The client closed the connection before the body was read."""


async def read_body(receive: Receive, headers: Headers, limit: int, pace: BodyPace | None = None) -> bytes:
    """Read the whole request body, refusing more than ``limit`` bytes with 413, and with 408 a body
    that arrives more slowly than ``pace`` allows."""
    content_type = headers.get("content-type")
    if content_type:
        media = content_type.partition(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise GatewayError(
                415,
                f"Unsupported Content-Type {media!r}: send the request body as application/json.",
                code="unsupported_media_type",
            )
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    started = asyncio.get_running_loop().time()
    try:
        async with asyncio.timeout_at(started + pace.timeout if pace is not None else None) as deadline:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            if not message.get("more_body", False):  # the usual case: the whole body in one message
                body: bytes = message.get("body", b"")
                if len(body) > limit:
                    raise _too_large(limit)
                return body
            chunks = [message.get("body", b"")]
            size = len(chunks[0])
            while True:
                if pace is not None and pace.min_rate:
                    deadline.reschedule(pace.deadline(started, size))
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        if pace is None:
            raise
    # Raised outside the handler, so that nothing takes the timeout for a failure of the server's own.
    assert pace is not None  # without a pace there is no deadline
    # The server closes the connection after the answer, as the request was not read to its end
    # (a ``Connection`` header would be refused on HTTP/2).
    raise GatewayError(
        REQUEST_TIMEOUT,
        f"The request body arrived too slowly: it must arrive within {pace.describe()}.",
        code="request_timeout",
    )


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"The request body is larger than the limit of {limit} bytes.", code="request_too_large"
    )


#: Longest time spent reading and dropping the rest of a body that is answered early.
DISCARD_SECONDS = 2.0


async def discard_body(receive: Receive, limit: int) -> bool:
    """Read and drop the rest of a request body before answering early (401, 413, 415).

    The server closes the connection as soon as an answer is complete while the request is still
    coming, so a client still sending would meet a connection reset instead of the answer. Gives up
    after ``limit`` bytes or :data:`DISCARD_SECONDS`; returns False when the client went away.
    """
    received = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DISCARD_SECONDS):
            while received <= limit:
                message = await receive()
                if message["type"] != "http.request":
                    return False
                if not message.get("more_body", False):
                    return True
                received += len(message.get("body", b""))
    return True


def parse_json_object(raw: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> dict[str, Any]:
    """The JSON object of a request body; 400 when it is not one or nests deeper than ``max_depth``."""
    if not raw:
        raise bad_request("The request body is empty: send a JSON object.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("depth limit"):  # orjson's own limit, far above ours
            raise _too_deep(max_depth) from None
        raise bad_request(
            "We could not parse the JSON body of your request. The API expects a JSON payload, "
            "but what was sent was not valid JSON."
        ) from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    if json_too_deep(raw, data, max_depth):
        raise _too_deep(max_depth)
    return data


def _too_deep(limit: int) -> GatewayError:
    return bad_request(
        f"The JSON body of your request nests deeper than the limit of {limit} levels.",
        code="json_too_deep",
    )
