"""Every strategy leaves a deployment at its rate limit alone, unless every candidate is limited."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest

from gateway_core import Gateway, RequestContext, parse_config
from gateway_core.testing import GatewayServer

STRATEGIES = ["round_robin", "weighted", "least_connections", "lowest_latency", "fill_first", "lowest_cost"]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def group(strategy: str, first: dict[str, Any] | None = None) -> dict[str, Any]:
    """Deployments a, b and c; ``a`` is the fastest, so every strategy wants it."""
    slower = {"provider": "mock", "options": {"latency_ms": 20}}
    deployments = [
        {"id": "a", "provider": "mock", **(first or {})},
        {"id": "b", **slower},
        {"id": "c", **slower},
    ]
    return {"models": {"m": {"strategy": strategy, "deployments": deployments}}}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_deployment_at_its_limit_takes_no_more_calls(strategy: str) -> None:
    with GatewayServer(group(strategy, {"rpm": 2})) as server:
        headers = {"Authorization": f"Bearer {server.api_key}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as client:
            answers = [client.post("/chat/completions", json=BODY) for _ in range(30)]
    assert [answer.status_code for answer in answers] == [200] * 30
    served = Counter(answer.headers["x-lockgate-deployment"] for answer in answers)
    assert served["a"] == 2
    assert served["b"] + served["c"] == 28


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_balancers_skip_limited_candidates_unless_all_are(strategy: str) -> None:
    gateway = Gateway(parse_config(group(strategy)))
    model = gateway.models["m"]
    ctx = RequestContext(gateway, "req_test", "chat", "openai", {}, body=BODY, model="m")
    a, b, c = model.deployments
    a.limited_until = time.monotonic() + 30
    chosen = {model.balancer.choose(ctx, model.deployments).id for _ in range(12)}
    assert "a" not in chosen
    assert chosen <= {"b", "c"}
    b.limited_until = c.limited_until = time.monotonic() + 60
    assert model.balancer.choose(ctx, model.deployments) in model.deployments
