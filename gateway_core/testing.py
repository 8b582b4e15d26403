"""Helpers for testing Lockgate and Lockgate plugins against a real server.

:class:`GatewayServer` serves a gateway under hypercorn on 127.0.0.1 (a free port) in a background
thread with its own event loop, so synchronous SDK clients and async tests can both call it::

    from gateway_core.testing import GatewayServer

    with GatewayServer({"models": {...}, "plugins": {...}}, api_key="test-key-123456789") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)

The module is also a pytest plugin (entry point ``pytest11``) providing the ``lockgate_server``
fixture: a factory that starts servers and stops them when the test ends.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway_core.config import GatewayConfig, parse_config

DEFAULT_TEST_KEY = "lg-test-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_test_key(data: Mapping[str, Any], api_key: str) -> dict[str, Any]:
    """Add ``api_key`` to the ``config_keys`` plugin unless the configuration sets up keys itself."""
    data = dict(data)
    plugins = dict(data.get("plugins") or {})
    if "config_keys" not in plugins:
        plugins["config_keys"] = {"keys": [{"name": "test", "key": api_key}]}
    data["plugins"] = plugins
    return data


class GatewayServer:
    """A gateway served by hypercorn on 127.0.0.1 in a background thread."""

    def __init__(
        self,
        config: Mapping[str, Any] | GatewayConfig,
        *,
        api_key: str = DEFAULT_TEST_KEY,
        extra_plugins: Iterable[tuple[str, object]] = (),
        base: Path | None = None,
    ) -> None:
        self.api_key = api_key
        if isinstance(config, GatewayConfig):
            self.config = config
        else:
            self.config = parse_config(with_test_key(config, api_key), source="<test config>", base=base)
        # Bind now and hand the socket to hypercorn, so no other process can take the port meanwhile.
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.config.server = self.config.server.model_copy(update={"host": "127.0.0.1", "port": self.port})
        self.extra_plugins = list(extra_plugins)
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        from gateway_core.app import create_app

        self.app = create_app(self.config, extra_plugins=self.extra_plugins)
        self.gateway = self.app.state.gateway

    def start(self) -> GatewayServer:
        self._thread = threading.Thread(target=self._run, name=f"lockgate-{self.port}", daemon=True)
        self._thread.start()
        if not self._started.wait(15):
            raise RuntimeError("the gateway did not start within 15 s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        from hypercorn.asyncio import serve

        from gateway_core.server import hypercorn_config

        hc = hypercorn_config(self.config)
        hc.worker_class = "asyncio"
        fd = self._socket.detach()  # hypercorn owns and closes it from here on
        hc.bind = [f"fd://{fd}"]

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.gateway.start()  # start-up errors surface as themselves (e.g. ConfigError)
            except BaseException as exc:
                os.close(fd)
                self._error = exc
                self._started.set()
                return
            server = asyncio.ensure_future(serve(self.app, hc, shutdown_trigger=self._stop.wait))  # type: ignore[arg-type]
            try:
                for _ in range(1500):
                    if server.done() or (self.gateway.ready and _port_open(self.port)):
                        break
                    await asyncio.sleep(0.01)
                if server.done():
                    server.result()
            except BaseException as exc:
                self._error = exc
            finally:
                self._started.set()
            await server

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    def stop(self) -> None:
        """Shut down gracefully (in-flight requests finish, shutdown hooks run)."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
        self._thread = None
        if self._socket.fileno() != -1:  # never handed to hypercorn
            self._socket.close()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def lockgate_server() -> Iterator[Any]:
    """Factory fixture: ``lockgate_server(config, **kwargs)`` returns a started :class:`GatewayServer`."""
    servers: list[GatewayServer] = []

    def start(config: Mapping[str, Any], **kwargs: Any) -> GatewayServer:
        server = GatewayServer(config, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
