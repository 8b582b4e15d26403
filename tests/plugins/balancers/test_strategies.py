"""Balancing strategies as a client sees them: which deployment (``x-lockgate-deployment``) answered."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gateway_core import Deployment, RequestContext
from gateway_core.testing import GatewayServer
from plugins.balancers.least_connections import LeastConnections

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def mock(id_: str, weight: float = 1.0, latency_ms: float = 0) -> dict[str, Any]:
    return {"id": id_, "provider": "mock", "weight": weight, "options": {"latency_ms": latency_ms}}


def served_by(server: GatewayServer, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as client:
        answers = [client.post("/chat/completions", json=BODY) for _ in range(count)]
    assert all(answer.status_code == 200 for answer in answers)
    return [answer.headers["x-lockgate-deployment"] for answer in answers]


def test_weighted_follows_the_weights_and_interleaves() -> None:
    config = {"models": {"m": {"strategy": "weighted", "deployments": [mock("big", 3), mock("small", 1)]}}}
    with GatewayServer(config) as server:
        order = served_by(server, 80)
    assert Counter(order) == {"big": 60, "small": 20}
    # Smooth: the light deployment comes every fourth request, never after a burst of the heavy one.
    assert order[:8] == ["big", "big", "small", "big", "big", "big", "small", "big"]


def test_lowest_latency_prefers_the_fast_deployment() -> None:
    config = {
        "models": {
            "m": {"strategy": "lowest_latency", "deployments": [mock("slow", latency_ms=60), mock("fast")]}
        }
    }
    with GatewayServer(config) as server:
        order = served_by(server, 60)
    assert order[:2] == ["slow", "fast"]  # each measured once first
    later = Counter(order[2:])
    assert later["fast"] >= 52  # the rest goes to the fast one, but for the occasional exploration
    assert later["slow"] >= 1


def test_least_connections_sends_new_calls_to_the_idle_deployment() -> None:
    config = {
        "models": {
            "m": {
                "strategy": "least_connections",
                "deployments": [mock("slow", latency_ms=400), mock("fast", latency_ms=5)],
            }
        }
    }
    with GatewayServer(config) as server, ThreadPoolExecutor(8) as pool:
        order = list(pool.map(lambda _: served_by(server, 3), range(8)))
    counts = Counter(deployment for batch in order for deployment in batch)
    # The slow deployment is busy for long: it takes at most one call per concurrent client at a time.
    assert counts["fast"] > counts["slow"]
    assert counts["slow"] >= 1


class _Provider:
    pass


def deployment(id_: str, in_flight: int) -> Deployment:
    made = Deployment(id=id_, group="m", provider=_Provider(), upstream_model="m")  # type: ignore[arg-type]
    made.in_flight = in_flight
    return made


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [((3, 1, 2), "b"), ((0, 5, 0), {"a", "c"}), ((2, 2, 2), {"a", "b", "c"})],
)
def test_least_connections_picks_the_fewest_in_flight(in_flight: tuple[int, int, int], expected: Any) -> None:
    deployments = [deployment(name, count) for name, count in zip("abc", in_flight, strict=True)]
    balancer = LeastConnections("m", deployments)
    ctx: RequestContext = None  # type: ignore[assignment]
    chosen = {balancer.choose(ctx, balancer.deployments).id for _ in range(6)}
    assert chosen == ({expected} if isinstance(expected, str) else expected)
