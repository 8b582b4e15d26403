"""The server every fake upstream runs on: an aiohttp application on 127.0.0.1 in a background thread.

The thread has its own event loop, so synchronous and asynchronous tests can both use a fake. A fake
subclasses :class:`BackgroundServer`, adds its routes in :meth:`~BackgroundServer.routes` and records
each request it receives with :meth:`~BackgroundServer._record`:

    class FakeThing(BackgroundServer[RecordedRequest]):
        name = "fake-thing"
        record_type = RecordedRequest

        def routes(self, app: web.Application) -> None:
            app.router.add_post("/v1/things", self._things)

    with FakeThing() as fake:
        ...
        assert fake.requests_to("/v1/things")[-1].json == {...}
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar

import orjson
from aiohttp import web


@dataclass(frozen=True)
class RecordedRequest:
    """One request a fake received."""

    method: str
    path: str
    #: Header names lower-cased.
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    @classmethod
    def of(cls, request: web.Request, body: bytes) -> Self:
        """The record of ``request``, whose body was ``body``."""
        return cls(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, body)


@dataclass(frozen=True)
class RecordedRequestWithQuery(RecordedRequest):
    """One request a fake received, with its query parameters."""

    query: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, request: web.Request, body: bytes) -> Self:
        return dataclasses.replace(super().of(request, body), query=dict(request.query))


R = TypeVar("R", bound=RecordedRequest)


def broken_event(event: bytes) -> bytes:
    """``event`` with its ``data:`` cut in the middle of the JSON (framing kept): what an upstream
    sends when its serializer fails or a proxy truncates a chunk. The blank line that ends it stays."""
    body = event.rstrip(b"\r\n")
    head, sep, data = body.rpartition(b"data: ")
    return head + sep + data[: max(1, len(data) // 2)] + event[len(body) :]


def echoed_headers(message: str, request: web.Request) -> str:
    """``message`` followed by the request's headers, as some OpenAI-compatible servers and debugging
    proxies put them in their error answers (the API key included)."""
    headers = {str(name): value for name, value in request.headers.items()}
    return f"{message} Request headers: {orjson.dumps(headers).decode()}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class BackgroundServer(Generic[R]):
    """An aiohttp application served on 127.0.0.1 by a thread with its own event loop.

    ``port`` and ``url`` are known once the server started (it binds a free port itself, so no other
    server can take it), or from the start with :attr:`reserve_port`. ``_lock`` guards ``requests``
    and whatever state a subclass shares between its handlers and the test.
    """

    #: The server thread's name, also used in the error when the server does not start.
    name = "fake"
    #: What :meth:`_record` stores in :attr:`requests`.
    record_type: type[R]
    #: Pick the port when the fake is created, so that ``port`` and ``url`` are known before it starts.
    reserve_port = False
    #: Largest request body the server accepts (aiohttp's default).
    client_max_size = 1024**2

    def __init__(self) -> None:
        self.requests: list[R] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._counter = 0
        self.port = _free_port() if self.reserve_port else 0
        self.url = f"http://127.0.0.1:{self.port}" if self.port else ""

    # --- what a fake provides ------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        """Add the fake's routes to its application."""
        raise NotImplementedError

    async def started(self) -> None:
        """Runs in the server's loop before it accepts requests."""

    async def stopping(self) -> None:
        """Runs in the server's loop after it stopped serving."""

    # --- control -------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    def requests_to(self, path: str) -> list[R]:
        """The recorded requests to ``path``."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # --- life cycle ----------------------------------------------------------------------------------

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the {self.name} server did not start within 10 s")
        if self._failure is not None:
            raise self._failure
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            app = web.Application(client_max_size=self.client_max_size)
            self.routes(app)
            runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
            await runner.setup()
            try:
                await self.started()
                await web.TCPSite(runner, "127.0.0.1", self.port).start()
                self.port = runner.addresses[0][1]
            except BaseException as exc:
                self._failure = exc
                self._ready.set()
                await runner.cleanup()
                await self.stopping()
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()
                await self.stopping()

        asyncio.run(main())

    # --- helpers for the handlers --------------------------------------------------------------------

    async def _record(self, request: web.Request) -> R:
        """Read the request's body and record the request."""
        recorded = self.record_type.of(request, await request.read())
        with self._lock:
            self.requests.append(recorded)
        return recorded

    def _next_number(self) -> int:
        """1, 2, 3, ...: numbers the ids a fake hands out."""
        with self._lock:
            self._counter += 1
            return self._counter
