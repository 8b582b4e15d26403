"""An overloaded upstream's retry hint is honoured as a 429's.

Anthropic answers 529 ``overloaded_error`` (and servers answer 503) with ``retry-after``: the
deployment cools down for that long, a retry of it waits at least that long, and a hint longer than
``retry.max_retry_after`` is not waited for: the client gets the error with ``Retry-After`` at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI
from tests.fakes.anthropic_upstream import FakeAnthropic

CLAUDE = "claude-sonnet-4-5"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def claude_upstream() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="module")
def gpt_upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def claude(claude_upstream: FakeAnthropic) -> Iterator[FakeAnthropic]:
    claude_upstream.reset()
    yield claude_upstream
    claude_upstream.reset()


@pytest.fixture
def gpt(gpt_upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    gpt_upstream.reset()
    yield gpt_upstream
    gpt_upstream.reset()


@pytest.fixture(scope="module")
def gateway(claude_upstream: FakeAnthropic, gpt_upstream: FakeOpenAI) -> Iterator[GatewayServer]:
    """One model group per test, so a deployment one test cools down is no other test's."""

    def claude(deployment_id: str) -> dict[str, Any]:
        return {
            "id": deployment_id,
            "provider": "anthropic",
            "base_url": claude_upstream.url,
            "api_key": claude_upstream.api_key,
            "model": CLAUDE,
        }

    gpt = {"provider": "openai", "base_url": gpt_upstream.base_url, "api_key": gpt_upstream.api_key}
    config = {
        "resilience": {"retry": {"attempts": 3, "backoff": 0.01, "max_backoff": 0.02, "max_retry_after": 5}},
        "health": {"breaker": {"failures": 1000, "min_requests": 1000}, "outlier": {"enabled": False}},
        "models": {
            "claude-waits": {"deployments": [claude("waits")]},
            "claude-pair": {"deployments": [claude("pair-a"), claude("pair-b")]},
            "claude-long": {"deployments": [claude("long")]},
            "gpt-long": {"deployments": [{**gpt, "id": "gpt-long", "model": "gpt-4o-mini"}]},
        },
    }
    with GatewayServer(config) as server:
        yield server


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.api_key, max_retries=0) as sdk:
        yield sdk


def overloaded(fake: FakeAnthropic, retry_after: str, **extra: Any) -> None:
    fake.behave(
        status=529,
        error_type="overloaded_error",
        message="Overloaded",
        headers={"retry-after": retry_after},
        **extra,
    )


def health_of(gateway: GatewayServer) -> dict[str, dict[str, Any]]:
    return {entry["id"]: entry for entry in gateway.gateway.health.snapshot()}


def test_a_retry_after_a_529_waits_at_least_its_hint(
    client: anthropic.Anthropic, claude: FakeAnthropic
) -> None:
    overloaded(claude, "1", faults_for=1)
    started = time.monotonic()

    raw = client.messages.with_raw_response.create(model="claude-waits", max_tokens=10, messages=HI)

    assert raw.parse().content
    assert raw.headers["x-lockgate-attempts"] == "2"
    assert time.monotonic() - started >= 1.0  # before: the 10 ms back-off alone
    assert len(claude.requests) == 2


def test_a_529_cools_its_deployment_down_for_the_hinted_time(
    client: anthropic.Anthropic, claude: FakeAnthropic, gateway: GatewayServer
) -> None:
    overloaded(claude, "20", faults_for=1)

    first = client.messages.with_raw_response.create(model="claude-pair", max_tokens=10, messages=HI)
    served = first.headers["x-lockgate-deployment"]
    following = [
        client.messages.with_raw_response.create(model="claude-pair", max_tokens=10, messages=HI).headers[
            "x-lockgate-deployment"
        ]
        for _ in range(4)
    ]

    assert following == [served] * 4  # the overloaded one is left alone
    health = health_of(gateway)
    cooling = [name for name in ("pair-a", "pair-b") if health[name]["state"] == "cooling_down"]
    assert len(cooling) == 1 and cooling[0] not in served
    assert health[cooling[0]]["until"] is not None


def test_a_hint_longer_than_max_retry_after_is_answered_at_once_with_retry_after(
    client: anthropic.Anthropic, claude: FakeAnthropic
) -> None:
    overloaded(claude, "600")

    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="claude-long", max_tokens=10, messages=HI)

    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"] == "600"
    body: Any = caught.value.body
    assert body["error"]["type"] == "overloaded_error"
    assert len(claude.requests) == 1  # not called again within the same request


def test_an_openai_compatible_503_with_retry_after_is_a_503_with_its_hint(
    gateway: GatewayServer, gpt: FakeOpenAI
) -> None:
    gpt.behave(status=503, message="The engine is currently overloaded.", headers={"retry-after": "600"})

    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {gateway.api_key}"},
        json={"model": "gpt-long", "messages": HI},
    )

    assert response.status_code == 503
    assert response.headers["retry-after"] == "600"
    assert response.json()["error"]["code"] == "upstream_overloaded"
    assert len(gpt.requests) == 1
