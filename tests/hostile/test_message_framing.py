"""Requests whose body framing is ambiguous (RFC 9112 section 6.1) are refused and their connection
closed, so nothing smuggled behind them is ever answered."""

from __future__ import annotations

import time

import orjson
import pytest

from gateway_core.testing import GatewayServer
from tests.hostile.servers import HELLO
from tests.raw_http import RawConnection, parse_response


def _framed(gateway: GatewayServer, headers: str, body: bytes, *, version: str = "1.1") -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/{version}\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {gateway.api_key}\r\nContent-Type: application/json\r\n{headers}\r\n"
    ).encode() + body


BODY = orjson.dumps({"model": "my-gpt", "messages": HELLO})
CHUNKED = f"{len(BODY):x}\r\n".encode() + BODY + b"\r\n0\r\n\r\n"
FRAMINGS = {
    "both": (f"Transfer-Encoding: chunked\r\nContent-Length: {len(CHUNKED)}\r\n", CHUNKED, "1.1", 400),
    "both, length first": ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", CHUNKED, "1.1", 400),
    "chunked in HTTP/1.0": ("Transfer-Encoding: chunked\r\n", CHUNKED, "1.0", 400),
    "conflicting lengths": (f"Content-Length: {len(BODY)}\r\nContent-Length: 5\r\n", BODY, "1.1", 400),
    "a length list that conflicts": (f"Content-Length: {len(BODY)}, 5\r\n", BODY, "1.1", 400),
    "a coding other than chunked": ("Transfer-Encoding: gzip, chunked\r\n", CHUNKED, "1.1", 501),
    "two Transfer-Encoding fields": (
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        CHUNKED,
        "1.1",
        501,
    ),
}


@pytest.mark.parametrize("case", list(FRAMINGS))
def test_ambiguous_framing_is_refused_and_the_connection_closed(gateway: GatewayServer, case: str) -> None:
    headers, body, version, status = FRAMINGS[case]
    connection = RawConnection(gateway.port)
    try:
        # A second request smuggled behind the first must never be answered.
        smuggled = (
            f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {gateway.api_key}\r\n\r\n"
        )
        connection.send(_framed(gateway, headers, body, version=version) + smuggled.encode())
        assert connection.wait_closed(5)
        response = parse_response(connection.received)
        assert response.status == status, connection.received
        assert connection.received.count(b"HTTP/1.1 ") == 1
        if status == 400 and response.body:
            assert response.json()["error"]["code"] == "ambiguous_framing"
    finally:
        connection.close()


def test_chunked_and_plain_bodies_are_served(gateway: GatewayServer) -> None:
    for headers, body in (
        ("Transfer-Encoding: chunked\r\n", CHUNKED),
        (f"Content-Length: {len(BODY)}\r\n", BODY),
    ):
        connection = RawConnection(gateway.port)
        try:
            connection.send(_framed(gateway, headers, body))
            deadline = time.monotonic() + 10
            while b'"chat.completion"' not in connection.received and time.monotonic() < deadline:
                connection.poll(0.05)
            assert parse_response(connection.received).status == 200
        finally:
            connection.close()
