"""Balancer numbers shared by replicas through the real Redis of ``LOCKGATE_TEST_REDIS_URL``.

Two gateways stand for two replicas; deployment ids are unique per test, so other gateways using the
same Redis do not count.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gateway_core.balancer_sync import BalancerSync
from gateway_core.testing import GatewayServer

REDIS_ENV = "LOCKGATE_TEST_REDIS_URL"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set")
    return url


@pytest.fixture
def ids() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"a-{suffix}", f"b-{suffix}"


def config(redis_url: str, strategy: str, *deployments: dict[str, Any]) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url},
        "models": {"m": {"strategy": strategy, "deployments": list(deployments)}},
    }


def mock(id_: str, latency_ms: float = 0) -> dict[str, Any]:
    return {"id": id_, "provider": "mock", "options": {"latency_ms": latency_ms}}


def served_by(server: GatewayServer, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as client:
        answers = [client.post("/chat/completions", json=BODY) for _ in range(count)]
    assert [answer.status_code for answer in answers] == [200] * count
    return [answer.headers["x-lockgate-deployment"] for answer in answers]


def wait_for_syncs(server: GatewayServer, count: int = 2) -> None:
    """Wait (bounded) until the gateway synced ``count`` more times."""
    sync = server.gateway.balancer_sync
    assert isinstance(sync, BalancerSync)
    target = sync.syncs + count
    deadline = time.monotonic() + 5
    while sync.syncs < target and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sync.syncs >= target


def test_least_connections_counts_the_calls_in_flight_on_other_replicas(
    redis_url: str, ids: tuple[str, str]
) -> None:
    a, b = ids
    # The first replica serves only `a`, slowly: its calls stay in flight.
    busy = config(redis_url, "least_connections", mock(a, latency_ms=3000))
    idle = config(redis_url, "least_connections", mock(a), mock(b))
    with GatewayServer(busy) as first, GatewayServer(idle) as second, ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(served_by, first, 1) for _ in range(3)]
        wait_for_syncs(first)
        wait_for_syncs(second, 1)
        order = served_by(second, 6)
        assert [call.result(timeout=10) for call in calls] == [[a]] * 3
    # Without the first replica's three calls, `a` and `b` would take turns.
    assert Counter(order) == {b: 6}


def test_lowest_latency_knows_what_other_replicas_measured(redis_url: str, ids: tuple[str, str]) -> None:
    slow, fast = ids
    group = config(redis_url, "lowest_latency", mock(slow, latency_ms=150), mock(fast))
    with GatewayServer(group) as first:
        served_by(first, 4)  # measures both
        wait_for_syncs(first)
        with GatewayServer(group) as second:
            wait_for_syncs(second)
            order = served_by(second, 5)
    # Alone, the second replica would first try the deployment it has not measured yet.
    assert order == [fast] * 5


def test_a_redis_outage_falls_back_to_local_numbers(
    refused_port: int, ids: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = ids
    group = config(f"redis://127.0.0.1:{refused_port}/0", "least_connections", mock(a), mock(b))
    group["redis"]["timeout"] = 0.2
    with caplog.at_level(logging.WARNING, "lockgate.balancer_sync"), GatewayServer(group) as server:
        sync = server.gateway.balancer_sync
        assert sync is not None
        deadline = time.monotonic() + 5
        while sync.connected is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sync.connected is False
        assert Counter(served_by(server, 6)) == {a: 3, b: 3}
        time.sleep(sync.interval * 2.5)  # a few more syncs fail meanwhile
    warnings = [r for r in caplog.records if r.name == "lockgate.balancer_sync"]
    assert len(warnings) == 1  # logged once per outage, not per sync


def test_a_worker_leaving_takes_its_numbers_with_it(redis_url: str, ids: tuple[str, str]) -> None:
    a, b = ids
    busy = config(redis_url, "least_connections", mock(a, latency_ms=3000))
    idle = config(redis_url, "least_connections", mock(a), mock(b))
    with GatewayServer(idle) as second:
        with GatewayServer(busy) as first, ThreadPoolExecutor(2) as pool:
            calls = [pool.submit(served_by, first, 1) for _ in range(2)]
            wait_for_syncs(first)
            wait_for_syncs(second, 1)
            assert second.gateway.models["m"].deployments[0].peer_in_flight == 2
            for call in calls:
                call.result(timeout=10)
        wait_for_syncs(second)
        assert second.gateway.models["m"].deployments[0].peer_in_flight == 0
