"""The events bus: in-process, and across instances through the real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway_core.events import Events
from tests.waiting import eventually_async as wait_for


@pytest.fixture
def channel() -> str:
    """A channel of this test only (other test runs may share the Redis server)."""
    return f"lockgate-test:{uuid.uuid4().hex}"


# --- in-process ------------------------------------------------------------------------------------------


async def test_in_process_subscribers_get_messages_before_publish_returns(channel: str) -> None:
    events = Events()
    await events.start()
    got: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []

    async def slow(message: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)
        done.append(message)

    events.subscribe(channel, got.append)
    events.subscribe(channel, slow)
    events.subscribe("other", got.append)
    await events.publish(channel, {"key_id": "k1"})
    assert got == [{"key_id": "k1"}]
    assert done == [{"key_id": "k1"}]
    assert events.mode == "local" and events.connected
    await events.stop()


async def test_a_failing_subscriber_does_not_stop_the_others(
    channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    events = Events()
    await events.start()
    got: list[dict[str, Any]] = []

    def broken(message: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    events.subscribe(channel, broken)
    events.subscribe(channel, got.append)
    await events.publish(channel, {"n": 1})
    assert got == [{"n": 1}]
    assert "a subscriber of" in caplog.text and "boom" in caplog.text
    await events.stop()


async def test_unsubscribing_stops_delivery(channel: str) -> None:
    events = Events()
    await events.start()
    got: list[dict[str, Any]] = []
    unsubscribe = events.subscribe(channel, got.append)
    await events.publish(channel, {"n": 1})
    unsubscribe()
    await events.publish(channel, {"n": 2})
    assert got == [{"n": 1}]
    await events.stop()


# --- through Redis ----------------------------------------------------------------------------------------


@pytest.fixture
async def two_replicas(redis_url: str) -> AsyncIterator[tuple[Events, Events]]:
    first, second = Events(redis_url), Events(redis_url)
    yield first, second
    await first.stop()
    await second.stop()


async def test_two_instances_on_one_redis_see_each_others_messages(
    two_replicas: tuple[Events, Events], channel: str
) -> None:
    first, second = two_replicas
    got_first: list[dict[str, Any]] = []
    got_second: list[dict[str, Any]] = []
    first.subscribe(channel, got_first.append)

    async def on_second(message: dict[str, Any]) -> None:
        got_second.append(message)

    second.subscribe(channel, on_second)
    await first.start()
    await second.start()
    assert first.connected and second.connected and first.mode == "redis"

    await first.publish(channel, {"key_id": "a"})
    assert got_first == [{"key_id": "a"}]  # locally, at once
    await wait_for(lambda: got_second == [{"key_id": "a"}], 1.0)  # the other replica within a second

    await second.publish(channel, {"key_id": "b"})
    await wait_for(lambda: got_first == [{"key_id": "a"}, {"key_id": "b"}], 1.0)
    # Redis hands the second replica its own "b" before a later "c": once "c" is in, a copy of "b" would be.
    await first.publish(channel, {"key_id": "c"})
    await wait_for(lambda: len(got_second) >= 3, 1.0)
    once = [{"key_id": "a"}, {"key_id": "b"}, {"key_id": "c"}]
    assert got_second == once  # its own message once, not twice


async def test_a_channel_subscribed_after_start_receives(
    two_replicas: tuple[Events, Events], channel: str
) -> None:
    first, second = two_replicas
    await first.start()
    await second.start()
    got: list[dict[str, Any]] = []
    second.subscribe(channel, got.append)
    await second.wait_subscribed(within=5.0)  # the listener subscribes within its polling interval
    await first.publish(channel, {"n": 1})
    await wait_for(lambda: got == [{"n": 1}], 1.0)


async def _kill_connections(redis_url: str, client_name: str) -> int:
    """Drop the Redis connections named ``client_name``, as a Redis restart would."""
    import coredis

    client = coredis.Redis.from_url(redis_url, decode_responses=True)
    killed = 0
    async with client:
        for info in await client.client_list():
            if info.get("name") == client_name:
                killed += await client.client_kill(identifier=int(info["id"]))
    return killed


async def test_the_subscriber_reconnects_after_losing_redis(
    two_replicas: tuple[Events, Events], channel: str, redis_url: str
) -> None:
    first, second = two_replicas
    got: list[dict[str, Any]] = []
    reconnected = asyncio.Event()
    second.subscribe(channel, got.append)
    second.on_reconnect(reconnected.set)
    await first.start()
    await second.start()

    assert await _kill_connections(redis_url, second.client_name) >= 1
    await asyncio.wait_for(reconnected.wait(), 5)
    assert second.connected
    await first.publish(channel, {"after": "reconnect"})
    await wait_for(lambda: got == [{"after": "reconnect"}], 1.0)


async def test_an_unreachable_redis_never_breaks_the_caller(
    channel: str, refused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    events = Events(f"redis://:not-logged-pw@127.0.0.1:{refused_port}/0")
    got: list[dict[str, Any]] = []
    events.subscribe(channel, got.append)
    await events.start()
    try:
        assert not events.connected
        await events.publish(channel, {"n": 1})  # logged, not raised
        assert got == [{"n": 1}]  # this worker still hears it
        assert "cannot publish" in caplog.text
        assert "not-logged-pw" not in caplog.text
    finally:
        await events.stop()
