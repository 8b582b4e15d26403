"""Fixtures for the database auth tests: a fresh migrated database per test, on SQLite and on the
real PostgreSQL, and a way for tests to use the store while gateways serve from the same database.

PostgreSQL tests need ``LOCKGATE_TEST_POSTGRES_DSN`` (``.ci/run`` sets it) and Redis tests
``LOCKGATE_TEST_REDIS_URL``; without them they are skipped.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

from gateway_core.store.database import Database
from gateway_core.store.migrate import upgrade

T = TypeVar("T")

POSTGRES_ENV = "LOCKGATE_TEST_POSTGRES_DSN"
REDIS_ENV = "LOCKGATE_TEST_REDIS_URL"


def _in_thread(coro_factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine in its own event loop on another thread (the test's thread has none running)."""

    async def main() -> T:
        return await coro_factory()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result(60)


def _with_database_name(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _postgres_admin(dsn: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, migrated, empty database: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'lockgate.db'}"
        _in_thread(lambda: upgrade(url))
        yield url
        return
    dsn = os.environ.get(POSTGRES_ENV)
    if not dsn:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    name = f"lockgate_auth_{uuid.uuid4().hex[:12]}"
    _in_thread(lambda: _postgres_admin(dsn, f'CREATE DATABASE "{name}"'))
    url = _with_database_name(dsn, name)
    try:
        _in_thread(lambda: upgrade(url))
        yield url
    finally:
        _in_thread(lambda: _postgres_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set")
    return url


class Store:
    """Runs store functions against a database from the test, on a thread of its own."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, operation: Callable[[], Awaitable[T]]) -> T:
        """``store(lambda: create_key("ci"))``: open the database, await the operation, close it."""

        async def run() -> T:
            database = Database(self.url)
            await database.start()
            try:
                with database.activate():
                    return await operation()
            finally:
                await database.stop()

        return _in_thread(run)

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of a table, as the database returns it."""

        async def read() -> list[dict[str, Any]]:
            from tortoise.context import get_current_context

            context = get_current_context()
            assert context is not None
            client = context.db(None)
            _, rows = await client.execute_query(f'SELECT * FROM "{table}"')  # noqa: S608 - test helper
            return [dict(row) for row in rows]

        return self(read)

    def tables(self) -> list[str]:
        if self.url.startswith("sqlite"):
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        else:
            sql = "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'"

        async def read() -> list[str]:
            from tortoise.context import get_current_context

            context = get_current_context()
            assert context is not None
            _, rows = await context.db(None).execute_query(sql)
            return [str(row["name"]) for row in rows]

        return self(read)


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(database_url)


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 that can cut every connection and refuse new ones (a database
    outage) and then come back on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._socket.close()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.up()

    def _call(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    def up(self) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

        self._call(start())

    def switch(self, up: bool) -> None:
        self.up() if up else self.down()

    def down(self) -> None:
        """Close the listening socket and every open connection."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._call(stop())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def close(self) -> None:
        self.down()

        async def finish() -> None:
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

        self._call(finish())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def start(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()
