"""The ``fill_first`` strategy: one deployment until it is at its rate limit, then the next, then back."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx

from gateway_core import Deployment, RequestContext
from gateway_core.testing import GatewayServer
from plugins.balancers.fill_first import FillFirst
from tests.waiting import eventually

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def mock(id_: str, **extra: Any) -> dict[str, Any]:
    return {"id": id_, "provider": "mock", **extra}


def served_by(client: httpx.Client, count: int) -> list[str]:
    answers = [client.post("/chat/completions", json=BODY) for _ in range(count)]
    assert [answer.status_code for answer in answers] == [200] * count
    return [answer.headers["x-lockgate-deployment"] for answer in answers]


def client_of(server: GatewayServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=10)


def test_spills_to_the_second_when_the_first_is_limited() -> None:
    config = {
        "models": {"m": {"strategy": "fill_first", "deployments": [mock("first", rpm=3), mock("second")]}}
    }
    with GatewayServer(config) as server, client_of(server) as client:
        order = served_by(client, 8)
    assert order == ["first"] * 3 + ["second"] * 5


def test_comes_back_to_the_first_once_it_recovers() -> None:
    # 60 a minute: a burst of 60, then one more each second.
    config = {
        "models": {"m": {"strategy": "fill_first", "deployments": [mock("first", rpm=60), mock("second")]}}
    }
    with GatewayServer(config) as server, client_of(server) as client:
        order = served_by(client, 61)
        for _ in range(20):  # bounded: the first one spills within a few requests
            if order[-1] == "second":
                break
            order += served_by(client, 1)
        assert order[-1] == "second"
        # One request's worth of the first one's limit comes back each second.
        eventually(lambda: served_by(client, 1) == ["first"], timeout=5.0, what="the first one serving again")
    assert order[:60] == ["first"] * 60


def test_without_limits_the_first_takes_everything() -> None:
    config = {"models": {"m": {"strategy": "fill_first", "deployments": [mock("first"), mock("second")]}}}
    with GatewayServer(config) as server, client_of(server) as client:
        assert Counter(served_by(client, 20)) == {"first": 20}


class _Provider:
    pass


def deployment(id_: str, limited_for: float = 0.0) -> Deployment:
    made = Deployment(id=id_, group="m", provider=_Provider(), upstream_model="m")  # type: ignore[arg-type]
    if limited_for:
        made.limited_until = time.monotonic() + limited_for
    return made


def test_chooses_the_first_not_limited_else_the_one_free_soonest() -> None:
    ctx: RequestContext = None  # type: ignore[assignment]
    a, b, c = deployment("a", 30), deployment("b"), deployment("c")
    assert FillFirst("m", [a, b, c]).choose(ctx, (a, b, c)) is b
    assert FillFirst("m", [a, c]).choose(ctx, (a, c)) is c
    late, soon = deployment("late", 30), deployment("soon", 5)
    assert FillFirst("m", [late, soon]).choose(ctx, (late, soon)) is soon
