"""A closed-loop HTTP/1.1 keep-alive load generator that records every request's latency.

``concurrency`` connections each send one request, wait for the whole answer, and send the next,
until ``max_requests`` answers arrived or ``max_seconds`` passed, whichever comes first. It is a raw
asyncio protocol (run it on uvloop) that frames answers by ``Content-Length`` or chunked encoding and
parses nothing else, so it spends little CPU per request on a machine it shares with the servers.

For each request it records the latency to the last byte and, for streamed answers, the time to the
first byte of the body (the first SSE event); all times are in seconds from ``perf_counter``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

_READ_TIMEOUT = 30.0


class HttpError(Exception):
    """The server answered something the load generator cannot frame, or closed the connection."""


@dataclass
class LoadResult:
    """What one load run measured."""

    concurrency: int
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_bytes: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def merge(self, other: LoadResult) -> None:
        self.elapsed += other.elapsed
        self.latencies += other.latencies
        self.first_bytes += other.first_bytes
        self.errors += other.errors
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank over the sorted values); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class _Connection(asyncio.Protocol):
    """A client connection that frames one answer at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.first_body: float = 0.0
        self.closed = False
        #: The server said ``Connection: close`` (hypercorn does after 1000 requests by default).
        self.must_close = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.head_end = -1
        self.length = -1  # Content-Length, or -1 for chunked
        self.chunk_at = 0  # where the next chunk header starts, for chunked bodies
        self.first_body = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpError(f"connection closed: {exc!r}"))

    def request(self, payload: bytes) -> asyncio.Future[int]:
        """Send one request; the future resolves to the status once the whole answer arrived."""
        assert self.transport is not None
        if self.closed:
            raise HttpError("connection closed")
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        try:
            done = self._parse()
        except HttpError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)
            if self.transport is not None:
                self.transport.close()
            return
        if done and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.status)

    def _parse(self) -> bool:
        buffer = self.buffer
        if self.head_end < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(buffer[:end]).lower()
            try:
                self.status = int(head[9:12])
            except ValueError:
                raise HttpError(f"bad status line {head[:40]!r}") from None
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at + 2)
                self.length = int(head[at + 17 : line_end if line_end >= 0 else None])
            elif b"chunked" in head:
                self.length = -1
            else:
                raise HttpError("an answer with neither Content-Length nor chunked encoding")
            if b"\r\nconnection: close" in head:
                self.must_close = True
            self.head_end = end + 4
            self.chunk_at = self.head_end
        if self.length >= 0:
            if len(buffer) > self.head_end and not self.first_body:
                self.first_body = time.perf_counter()
            if len(buffer) < self.head_end + self.length:
                return False
            del buffer[: self.head_end + self.length]
            return True
        while True:
            line_end = buffer.find(b"\r\n", self.chunk_at)
            if line_end < 0:
                return False
            try:
                size = int(buffer[self.chunk_at : line_end].split(b";", 1)[0], 16)
            except ValueError:
                raise HttpError("bad chunk size") from None
            if size and not self.first_body:
                self.first_body = time.perf_counter()
            chunk_end = line_end + 2 + size + 2
            if len(buffer) < chunk_end:
                return False
            self.chunk_at = chunk_end
            if size == 0:
                del buffer[:chunk_end]
                return True


def build_request(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    """The bytes of one ``POST`` with a JSON body."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run_load(
    host: str,
    port: int,
    payload: bytes,
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
) -> LoadResult:
    """Send ``payload`` over ``concurrency`` keep-alive connections; bounded in count and in time."""
    loop = asyncio.get_running_loop()
    result = LoadResult(concurrency)
    connections: list[_Connection] = []

    async def connect() -> _Connection:
        _, protocol = await loop.create_connection(_Connection, host, port)
        connections.append(protocol)
        return protocol

    for _ in range(concurrency):
        await connect()
    issued = 0
    deadline = 0.0
    latencies = result.latencies
    first_bytes = result.first_bytes
    statuses = result.statuses

    async def worker(connection: _Connection) -> None:
        nonlocal issued
        perf_counter = time.perf_counter
        while issued < max_requests and perf_counter() < deadline:
            if connection.must_close or connection.closed:
                # Reconnecting counts in the run's time (so in requests/s), not in a request's latency.
                if connection.transport is not None:
                    connection.transport.close()
                try:
                    connection = await connect()
                except OSError:
                    result.errors += 1
                    return
            issued += 1
            started = perf_counter()
            try:
                status = await connection.request(payload)
            except HttpError:
                result.errors += 1
                if result.errors > max(10, concurrency):
                    return
                continue
            ended = perf_counter()
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200:
                result.errors += 1
                continue
            latencies.append(ended - started)
            if connection.length < 0:
                first_bytes.append(connection.first_body - started)

    def close_all() -> None:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()

    started = time.perf_counter()
    deadline = started + max_seconds
    # A server that stops answering fails the run's open requests instead of hanging it.
    guard = loop.call_later(max_seconds + _READ_TIMEOUT, close_all)
    try:
        await asyncio.gather(*(worker(connection) for connection in connections))
    finally:
        result.elapsed = time.perf_counter() - started
        guard.cancel()
        close_all()
    return result
