"""HTTP/1.1 spoken byte by byte on a plain socket: for requests no HTTP client library would send."""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def parse_response(data: bytes) -> RawResponse:
    """The first response in ``data`` (a ``Content-Length`` framed one)."""
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return RawResponse(int(status_line.split()[1]), headers, rest[:length])


@dataclass
class RawConnection:
    """A client connection to 127.0.0.1 that records what the server sent and whether it closed."""

    port: int
    sock: socket.socket = field(init=False)
    received: bytes = b""
    closed: bool = False
    opened: float = field(default_factory=time.monotonic)
    closed_after: float | None = None

    def __post_init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.opened = time.monotonic()

    def send(self, data: bytes) -> None:
        """Send ``data``; a connection the server has closed is marked closed."""
        if self.closed:
            return
        try:
            self.sock.sendall(data)
        except OSError:  # reset or broken pipe: the server is gone
            self._mark_closed()

    def poll(self, wait: float = 0.0) -> None:
        """Read what arrived within ``wait`` seconds (and notice the server closing)."""
        if self.closed:
            return
        readable, _, _ = select.select([self.sock], [], [], wait)
        if not readable:
            return
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if data:
            self.received += data
        else:
            self._mark_closed()

    def wait_closed(self, seconds: float) -> bool:
        """Read until the server closes the connection or ``seconds`` pass; whether it closed."""
        deadline = time.monotonic() + seconds
        while not self.closed and time.monotonic() < deadline:
            self.poll(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.closed

    def response(self) -> RawResponse:
        return parse_response(self.received)

    def close(self) -> None:
        self.sock.close()

    def _mark_closed(self) -> None:
        self.closed = True
        self.closed_after = time.monotonic() - self.opened


def trickle(connections: list[RawConnection], data: bytes, every: float, seconds: float) -> None:
    """Send ``data`` one byte at a time to every connection, one byte each ``every`` seconds, until all
    are closed or ``seconds`` pass (and never more than ``len(data)`` bytes)."""
    deadline = time.monotonic() + seconds
    for index in range(len(data)):
        for connection in connections:
            connection.send(data[index : index + 1])
        step_end = time.monotonic() + every
        while time.monotonic() < step_end:
            for connection in connections:
                connection.poll(0.01)
        if all(connection.closed for connection in connections) or time.monotonic() > deadline:
            return
