"""The shared Redis client: scripts, fast failure during an outage and recovery."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway_core.config import RedisConfig
from gateway_core.store import kv
from gateway_core.store.kv import RedisUnavailable, SharedRedis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_runs_scripts_and_commands(redis_url: str) -> None:
    redis = SharedRedis(RedisConfig(url=redis_url))
    await redis.start()
    try:
        add = redis.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        key = "{lockgate-test}kv"
        await redis.run(lambda client: client.delete([key]))
        assert await add([key], [2]) == 2
        assert await add([key], [3]) == 5
        await redis.run(lambda client: client.delete([key]))
        assert redis.healthy
    finally:
        await redis.stop()


async def test_an_outage_fails_fast_and_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv, "PROBE_SECONDS", 0.05)
    port = free_port()
    redis = SharedRedis(RedisConfig(url=f"redis://127.0.0.1:{port}/0", timeout=0.2))
    recovered = asyncio.Event()
    redis.on_recover(recovered.set)
    await redis.start()
    try:
        with pytest.raises(RedisUnavailable):
            await redis.run(lambda client: client.ping())
        assert not redis.healthy
        # While down, calls are refused without a network round trip.
        with pytest.raises(RedisUnavailable):
            await redis.run(lambda client: client.ping())
        assert redis.failures == 2
        # Something starts listening on the port: the probe notices and the client is healthy again.
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        async with server:
            await asyncio.wait_for(recovered.wait(), 5)
        assert redis.healthy
    finally:
        await redis.stop()
