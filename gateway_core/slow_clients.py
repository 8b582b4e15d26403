"""Cutting off clients that send their request too slowly (slowloris).

Two deadlines from the ``server:`` section bound the time to a complete request:

- The request line and headers must arrive within ``header_timeout`` seconds, counted from the
  opening of the connection for its first request and from the first byte of each later one (the
  wait between requests on a kept-alive connection is ``keep_alive_timeout``). hypercorn has no such
  deadline, so :class:`HeaderDeadlineServer` adds it under hypercorn's HTTP/1.1 parser: a late
  client gets ``408 Request Timeout`` and the connection is closed.
- The body must arrive within ``body_timeout`` seconds plus one second per ``body_min_rate`` bytes
  received: a client sending steadily at that rate is never cut off, one that stalls or trickles is.
  :func:`gateway_core.request_body.read_body` enforces it with :class:`BodyPace`, answering 408 in the
  client's dialect and closing the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypercorn.asyncio import run as hypercorn_run
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Event, Updated
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import AppWrapper, LifespanState

if TYPE_CHECKING:
    from gateway_core.config import ServerConfig

_LATE_HEADERS_ANSWER = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True, slots=True)
class BodyPace:
    """How long a request body may take to arrive."""

    #: Seconds for the whole body, beyond what ``min_rate`` earns.
    timeout: float
    #: Bytes per second that extend the deadline by a second each; 0 = ``timeout`` bounds the body.
    min_rate: int

    @classmethod
    def of(cls, server: ServerConfig) -> BodyPace:
        return cls(server.body_timeout, server.body_min_rate)

    def deadline(self, started: float, received: int) -> float:
        """The loop time by which the body must be complete, ``received`` bytes after ``started``."""
        return started + self.timeout + (received / self.min_rate if self.min_rate else 0.0)

    def describe(self) -> str:
        extra = f" plus 1 s per {self.min_rate} bytes" if self.min_rate else ""
        return f"{self.timeout:g} s{extra}"


class GatewayHypercornConfig(Config):
    """hypercorn's configuration with the gateway's connection deadlines."""

    #: Seconds for a request's line and headers; None = hypercorn's behaviour (no deadline).
    header_timeout: float | None = None


class HeaderDeadlineServer(TCPServer):
    """hypercorn's TCP connection handler with a deadline for each request's headers.

    hypercorn reports a parsed request (``Updated(idle=False)``) and a finished exchange
    (``Updated(idle=True)``); the deadline runs from the connection's opening, or from the first
    bytes read after a finished exchange, until the next request is parsed.
    """

    def __init__(
        self,
        app: AppWrapper,
        loop: asyncio.AbstractEventLoop,
        config: Config,
        context: WorkerContext,
        state: LifespanState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        super().__init__(app, loop, config, context, state, reader, writer)
        self._header_timeout: float | None = getattr(config, "header_timeout", None)
        self._between_requests = True
        self._header_timer: asyncio.TimerHandle | None = None
        if self._header_timeout is not None:
            self.reader = _ReadNotifier(self.reader, self._bytes_read)  # type: ignore[assignment]
            self._header_timer = loop.call_later(self._header_timeout, self._headers_late)

    def _bytes_read(self) -> None:
        if self._between_requests and self._header_timer is None and self._header_timeout is not None:
            self._header_timer = self.loop.call_later(self._header_timeout, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            self._between_requests = event.idle
            if not event.idle:
                self._stop_header_timer()
        await super().protocol_send(event)

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self._between_requests:
            return
        if isinstance(getattr(self.protocol, "protocol", None), H11Protocol):
            self.writer.write(_LATE_HEADERS_ANSWER)
        self.writer.close()  # the read loop then sees the end of the stream and hypercorn cleans up

    async def _close(self) -> None:
        self._stop_header_timer()
        await super()._close()


class _ReadNotifier:
    """The connection's stream reader, calling ``on_read`` whenever bytes arrive."""

    def __init__(self, reader: asyncio.StreamReader, on_read: Callable[[], None]) -> None:
        self._reader = reader
        self._on_read = on_read

    def at_eof(self) -> bool:
        return self._reader.at_eof()

    async def read(self, n: int = -1) -> bytes:
        data = await self._reader.read(n)
        if data:
            self._on_read()
        return data


def install_header_deadlines() -> None:
    """Make hypercorn's asyncio workers (the gateway's, uvloop included) serve connections with
    :class:`HeaderDeadlineServer`; connections of a configuration without ``header_timeout`` behave
    as hypercorn's own."""
    hypercorn_run.TCPServer = HeaderDeadlineServer  # type: ignore[attr-defined]
