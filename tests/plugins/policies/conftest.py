"""Fixtures of the policy tests: gateways whose counters live in memory, in the test Redis (under a
prefix of their own, removed afterwards) or in a throwaway redis-server for outages; a database."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway_core.limits import Verdict, Window
from gateway_core.testing import GatewayServer
from tests.plugins.policies.redis_server import RedisServer

T = TypeVar("T")

REDIS_ENV = "LOCKGATE_TEST_REDIS_URL"


def in_thread(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine in an event loop of its own on another thread."""

    async def main() -> T:
        return await make()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result(60)


def on_gateway(server: GatewayServer, coro: Awaitable[T]) -> T:
    """Run a coroutine on the gateway's own event loop (its counters are not thread-safe)."""
    assert server._loop is not None
    return asyncio.run_coroutine_threadsafe(coro, server._loop).result(10)  # type: ignore[arg-type]


def used(server: GatewayServer, scope: str, window: Window) -> int:
    """How much of ``window`` a scope has used, read through the gateway's counters."""
    probe = Window(window.name, window.limit, window.seconds, 0)
    verdict: Verdict = on_gateway(server, server.gateway.counters.take(scope, [probe]))
    return verdict.used[window.name]


def settled(server: GatewayServer, seconds: float = 5.0) -> None:
    """Wait until the gateway finished its background work (policy settlements)."""

    async def idle() -> None:
        tasks = set(server.gateway._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=seconds)

    on_gateway(server, idle())


async def _delete_prefix(url: str, prefix: str) -> None:
    import coredis

    client: Any = coredis.Redis.from_url(url)
    async with client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(keys)


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set")
    return url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, killed at the end (outage tests stop it, never the shared one).

    Ask for it before ``serve``: gateways then stop while it still runs.
    """
    with RedisServer() as server:
        yield server


@pytest.fixture
def serve() -> Iterator[Callable[..., GatewayServer]]:
    """``serve(config, prefix=None)`` starts a gateway; with Redis its counters use ``prefix`` (a new
    one per test by default) and their keys are deleted at the end."""
    servers: list[GatewayServer] = []
    prefixes: dict[str, str] = {}
    default_prefix = f"lockgate-test-{uuid.uuid4().hex[:12]}"

    def start(config: dict[str, Any], prefix: str | None = None, **kwargs: Any) -> GatewayServer:
        server = GatewayServer(config, **kwargs)
        redis = server.gateway.counters.redis
        if redis is not None:
            redis.prefix = prefix or default_prefix
            prefixes[redis.prefix] = server.config.redis.url  # type: ignore[union-attr]
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
    for prefix, url in prefixes.items():
        _cleanup(url, prefix)


def _cleanup(url: str, prefix: str) -> None:
    if url == os.environ.get(REDIS_ENV):  # a throwaway redis-server takes its keys with it
        in_thread(lambda: _delete_prefix(url, prefix))


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A new, migrated SQLite database."""
    from gateway_core.store.migrate import upgrade

    url = f"sqlite://{tmp_path / 'lockgate.db'}"
    in_thread(lambda: upgrade(url))
    return url


@pytest.fixture
def store(database_url: str) -> Callable[[Callable[[], Awaitable[T]]], T]:
    """``store(lambda: create_key(...))`` runs ORM operations against the test database."""
    from gateway_core.store.database import Database

    def run(operation: Callable[[], Awaitable[T]]) -> T:
        async def main() -> T:
            database = Database(database_url)
            await database.start()
            try:
                with database.activate():
                    return await operation()
            finally:
                await database.stop()

        return in_thread(main)

    return run
