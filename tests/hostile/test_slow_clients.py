"""Clients sending their request a byte at a time are cut off: headers by ``server.header_timeout``
(408, then the connection is closed), bodies by ``body_timeout`` and ``body_min_rate`` (408 in the
client's dialect); a body sent slowly but steadily is still served."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer, free_port
from tests.hostile.servers import BODY_MIN_RATE, BODY_TIMEOUT, HEADER_TIMEOUT, HELLO, SLACK, error_of
from tests.raw_http import RawConnection, trickle


def chat_request(
    port: int, api_key: str, path: str = "/v1/chat/completions", body: bytes | None = None
) -> bytes:
    body = body if body is not None else orjson.dumps({"model": "my-gpt", "messages": HELLO})
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {api_key}\r\n"
        f"x-api-key: {api_key}\r\nanthropic-version: 2023-06-01\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_headers_sent_one_byte_at_a_time_are_cut_off(gateway: GatewayServer) -> None:
    connections = [RawConnection(gateway.port) for _ in range(10)]
    try:
        trickle(
            connections, chat_request(gateway.port, gateway.api_key), every=0.05, seconds=HEADER_TIMEOUT + 5
        )
        for connection in connections:
            assert connection.closed
            assert connection.closed_after is not None
            assert connection.closed_after < HEADER_TIMEOUT + SLACK
            assert connection.response().status == 408
    finally:
        for connection in connections:
            connection.close()


def test_a_silent_connection_is_closed_after_the_header_timeout(gateway: GatewayServer) -> None:
    connection = RawConnection(gateway.port)
    try:
        assert connection.wait_closed(HEADER_TIMEOUT + 5)
        assert connection.closed_after is not None and connection.closed_after < HEADER_TIMEOUT + SLACK
    finally:
        connection.close()


def test_an_idle_kept_alive_connection_is_not_cut_off_by_the_header_timeout(gateway: GatewayServer) -> None:
    """Between requests, ``keep_alive_timeout`` applies; the header deadline starts with the next byte."""
    connection = RawConnection(gateway.port)
    try:
        for _ in range(2):
            connection.send(chat_request(gateway.port, gateway.api_key))
            deadline = time.monotonic() + 10
            while b'"chat.completion"' not in connection.received and time.monotonic() < deadline:
                connection.poll(0.05)
            assert connection.response().status == 200
            connection.received = b""
            assert not connection.wait_closed(HEADER_TIMEOUT * 2)  # idle for twice the header timeout
    finally:
        connection.close()


SLOW_BODY_ROUTES = ["/v1/chat/completions", "/v1/messages", "/admin/api/auth/login"]


@pytest.mark.parametrize("path", SLOW_BODY_ROUTES)
def test_a_body_sent_one_byte_at_a_time_gets_408_in_the_client_dialect(
    gateway: GatewayServer, path: str
) -> None:
    request = chat_request(gateway.port, gateway.api_key, path)
    head, _, body = request.partition(b"\r\n\r\n")
    connections = [RawConnection(gateway.port) for _ in range(5)]
    try:
        for connection in connections:
            connection.send(head + b"\r\n\r\n")
        started = time.monotonic()
        trickle(connections, body, every=0.05, seconds=BODY_TIMEOUT + 5)
        for connection in connections:
            assert connection.wait_closed(1)
            assert time.monotonic() - started < BODY_TIMEOUT + SLACK + 1
            response = connection.response()
            assert response.status == 408, response
            assert response.headers["x-request-id"]
            error = error_of(path, response)
            assert "arrived too slowly" in error["message"]
    finally:
        for connection in connections:
            connection.close()


def test_a_stalled_body_gets_408(gateway: GatewayServer) -> None:
    connection = RawConnection(gateway.port)
    try:
        request = chat_request(gateway.port, gateway.api_key)
        connection.send(request[: request.index(b"\r\n\r\n") + 4 + 10])  # headers and 10 bytes of body
        assert connection.wait_closed(BODY_TIMEOUT + 5)
        assert connection.closed_after is not None and connection.closed_after < BODY_TIMEOUT + SLACK
        assert connection.response().status == 408
    finally:
        connection.close()


def test_a_large_body_sent_slowly_but_steadily_is_served(gateway: GatewayServer) -> None:
    """60 kB at about 50 kB/s: more than ``body_timeout``, at more than ``body_min_rate``."""
    text = "steady " * 8_500
    body = orjson.dumps({"model": "my-gpt", "messages": [{"role": "user", "content": text}]})
    assert len(body) > 3 * BODY_MIN_RATE * BODY_TIMEOUT
    request = chat_request(gateway.port, gateway.api_key, body=body)
    connection = RawConnection(gateway.port)
    try:
        started = time.monotonic()
        for offset in range(0, len(request), 2_500):
            connection.send(request[offset : offset + 2_500])
            connection.poll(0.05)
        deadline = time.monotonic() + 10
        while b'"chat.completion"' not in connection.received and time.monotonic() < deadline:
            connection.poll(0.05)
        assert time.monotonic() - started > BODY_TIMEOUT * 2
        assert connection.response().status == 200
        assert not connection.closed
    finally:
        connection.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_lockgate_serve_cuts_off_slow_headers_and_bodies(tmp_path: Path, workers: int) -> None:
    """The deadlines hold as ``lockgate serve`` runs: uvloop, and worker processes of their own."""
    port = free_port()
    config = {
        "server": {
            "port": port,
            "workers": workers,
            "header_timeout": HEADER_TIMEOUT,
            "body_timeout": BODY_TIMEOUT,
        },
        "models": {"mock-echo": {"deployments": [{"provider": "mock"}]}},
        "plugins": {"config_keys": {"keys": [{"name": "test", "key": DEFAULT_TEST_KEY}]}},
    }
    path = tmp_path / "lockgate.yaml"
    path.write_text(yaml.safe_dump(config))
    script = Path(sys.executable).parent / "lockgate"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway_core.cli"]
    process = subprocess.Popen([*command, "serve", "--config", str(path)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _answers(port) and time.monotonic() < deadline:
            assert process.poll() is None, "lockgate serve ended"
            time.sleep(0.1)
        body = orjson.dumps({"model": "mock-echo", "messages": HELLO})
        request = chat_request(port, DEFAULT_TEST_KEY, body=body)
        head = request[: request.index(b"\r\n\r\n") + 4]
        slow_headers = [RawConnection(port) for _ in range(4)]
        slow_bodies = [RawConnection(port) for _ in range(4)]
        try:
            for connection in slow_bodies:
                connection.send(head)
            trickle(
                slow_headers + slow_bodies, request, every=0.05, seconds=HEADER_TIMEOUT + BODY_TIMEOUT + 5
            )
            for connection in slow_headers + slow_bodies:
                assert connection.wait_closed(1)
                assert connection.response().status == 408
            assert slow_bodies[0].response().json()["error"]["code"] == "request_timeout"
        finally:
            for connection in slow_headers + slow_bodies:
                connection.close()
    finally:
        process.terminate()
        process.wait(30)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
