"""Retries, failover, fallbacks and deadlines, seen by clients of the gateway.

Three fake OpenAI upstreams (``a``, ``b``, ``c``) inject faults; the ``x-lockgate-deployment`` and
``x-lockgate-attempts`` headers tell which deployment served and how many calls it took. Circuit
breakers are set so high they never open here (they have their own tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI

FAST_RETRY = {"attempts": 3, "backoff": 0.05, "max_backoff": 0.2, "max_retry_after": 2}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeOpenAI]]:
    with FakeOpenAI() as a, FakeOpenAI() as b, FakeOpenAI() as c:
        yield {"a": a, "b": b, "c": c}


@pytest.fixture
def upstreams(fakes: dict[str, FakeOpenAI]) -> Iterator[dict[str, FakeOpenAI]]:
    for fake in fakes.values():
        fake.reset()
    yield fakes
    for fake in fakes.values():
        fake.reset()


def deployment(fake: FakeOpenAI, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": name,
        "provider": "openai",
        "base_url": fake.base_url,
        "api_key": fake.api_key,
        "model": "gpt-4o-mini",
        **extra,
    }


@pytest.fixture(scope="module")
def gateway(fakes: dict[str, FakeOpenAI], refused_port: int) -> Iterator[GatewayServer]:
    a, b, c = fakes["a"], fakes["b"], fakes["c"]
    config = {
        "resilience": {"retry": FAST_RETRY},
        "health": {
            "breaker": {"failures": 1000, "min_requests": 1000},
            "outlier": {"enabled": False},
            "max_retry_after": 0.5,
        },
        "models": {
            # Two deployments in a fixed order: a first, then b.
            "pair": {"strategy": "fill_first", "deployments": [deployment(a, "a"), deployment(b, "b")]},
            "single": {"deployments": [deployment(a, "a-only")]},
            "primary": {
                "deployments": [deployment(a, "primary-a")],
                "fallbacks": ["backup"],
                "context_window_fallbacks": ["long-context"],
            },
            "backup": {"deployments": [deployment(b, "backup-b")]},
            "long-context": {"deployments": [deployment(c, "long-c")]},
            "slow": {
                "deadline": 0.6,
                "deployments": [deployment(a, "slow-a", timeout={"read": 5})],
            },
            "flaky-timeout": {
                "strategy": "fill_first",
                "deployments": [
                    deployment(a, "timeout-a", timeout={"read": 0.3}),
                    deployment(b, "timeout-b"),
                ],
            },
            "unreachable-first": {
                "strategy": "fill_first",
                "deployments": [
                    deployment(a, "refused", base_url=f"http://127.0.0.1:{refused_port}/v1"),
                    deployment(b, "reachable"),
                ],
            },
            "embed-pair": {
                "strategy": "fill_first",
                "deployments": [
                    deployment(a, "embed-a", model="text-embedding-3-small"),
                    deployment(b, "embed-b", model="text-embedding-3-small"),
                ],
            },
            "no-retry": {"retry": {"attempts": 1}, "deployments": [deployment(a, "no-retry-a")]},
        },
    }
    with GatewayServer(config) as server:
        yield server


@pytest.fixture
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.base_url, headers={"Authorization": f"Bearer {gateway.api_key}"}, timeout=10
    ) as client:
        yield client


def chat(http: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}
    return http.post("/chat/completions", json=body)


def served(response: httpx.Response) -> tuple[str, int]:
    return response.headers["x-lockgate-deployment"], int(response.headers["x-lockgate-attempts"])


def test_a_healthy_call_takes_one_attempt(http: httpx.Client, upstreams: dict[str, FakeOpenAI]) -> None:
    response = chat(http, "pair")
    assert response.status_code == 200
    assert served(response) == ("a", 1)


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 503, "message": "The engine is currently overloaded, please try again later"},
        {"status": 429, "type": "requests", "code": "rate_limit_exceeded"},
        {"malformed_json": True},
        {"status": 401, "code": "invalid_api_key"},
    ],
    ids=["500", "503", "429", "malformed-json", "upstream-auth"],
)
def test_a_failing_deployment_fails_over_to_the_next(
    http: httpx.Client, upstreams: dict[str, FakeOpenAI], fault: dict[str, Any]
) -> None:
    upstreams["a"].behave(**fault)
    response = chat(http, "pair")
    assert response.status_code == 200, response.text
    assert served(response) == ("b", 2)
    assert response.json()["choices"][0]["message"]["content"] == "Echo: hello there"
    assert len(upstreams["a"].requests) == 1
    assert len(upstreams["b"].requests) == 1


def test_a_refused_connection_fails_over(http: httpx.Client, upstreams: dict[str, FakeOpenAI]) -> None:
    response = chat(http, "unreachable-first")
    assert response.status_code == 200
    assert served(response) == ("reachable", 2)


def test_an_upstream_timeout_fails_over(http: httpx.Client, upstreams: dict[str, FakeOpenAI]) -> None:
    upstreams["a"].behave(delay=1.0)
    response = chat(http, "flaky-timeout")
    assert response.status_code == 200
    assert served(response) == ("timeout-b", 2)


def test_the_same_deployment_is_retried_after_a_back_off(
    http: httpx.Client, upstreams: dict[str, FakeOpenAI]
) -> None:
    upstreams["a"].behave(status=502, faults_for=2)
    response = chat(http, "single")
    assert response.status_code == 200
    assert served(response) == ("a-only", 3)
    assert len(upstreams["a"].requests) == 3


def test_retries_end_with_the_upstream_error(http: httpx.Client, upstreams: dict[str, FakeOpenAI]) -> None:
    upstreams["a"].behave(status=500)
    response = chat(http, "single")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert served(response) == ("a-only", 3)
    assert len(upstreams["a"].requests) == 3


def test_retry_after_ms_is_waited_for(http: httpx.Client, upstreams: dict[str, FakeOpenAI]) -> None:
    upstreams["a"].behave(status=429, headers={"retry-after-ms": "400"}, faults_for=1)
    started = time.monotonic()
    response = chat(http, "single")
    assert response.status_code == 200
    assert served(response) == ("a-only", 2)
    assert time.monotonic() - started >= 0.4


def test_a_retry_after_longer_than_allowed_is_answered_not_waited(
    http: httpx.Client, upstreams: dict[str, FakeOpenAI]
) -> None:
    upstreams["a"].behave(
        status=429, headers={"retry-after": "60"}, type="requests", code="rate_limit_exceeded"
    )
    started = time.monotonic()
    response = chat(http, "single")
    assert time.monotonic() - started < 1.5
    assert response.status_code == 429
    assert response.headers["retry-after"] == "60"
    assert response.headers["x-lockgate-attempts"] == "1"


def test_client_mistakes_are_not_retried(http: httpx.Client, upstreams: dict[str, FakeOpenAI]) -> None:
    upstreams["a"].behave(status=400, message="Invalid value for 'temperature'.", code="invalid_value")
    response = chat(http, "pair")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Invalid value for 'temperature'."
    assert response.headers["x-lockgate-attempts"] == "1"
    assert not upstreams["b"].requests


def test_a_group_without_retries_answers_the_first_failure(
    http: httpx.Client, upstreams: dict[str, FakeOpenAI]
) -> None:
    upstreams["a"].behave(status=503)
    response = chat(http, "no-retry")
    assert response.status_code == 502
    assert len(upstreams["a"].requests) == 1


def test_a_failing_group_falls_back_to_the_next_group(
    http: httpx.Client, upstreams: dict[str, FakeOpenAI]
) -> None:
    upstreams["a"].behave(status=500)
    response = chat(http, "primary")
    assert response.status_code == 200
    assert served(response) == ("backup-b", 4)  # three calls to primary, then the fallback
    assert not upstreams["c"].requests


def test_a_prompt_too_long_goes_to_the_context_window_fallback(
    http: httpx.Client, upstreams: dict[str, FakeOpenAI]
) -> None:
    upstreams["a"].behave(
        status=400,
        message="This model's maximum context length is 128000 tokens. However, your messages resulted in "
        "130000 tokens. Please reduce the length of the messages.",
        code="context_length_exceeded",
    )
    response = chat(http, "primary")
    assert response.status_code == 200
    assert served(response) == ("long-c", 2)
    assert not upstreams["b"].requests


def test_when_every_group_fails_the_client_gets_the_first_groups_error(
    http: httpx.Client, upstreams: dict[str, FakeOpenAI]
) -> None:
    upstreams["a"].behave(status=500)
    upstreams["b"].behave(
        status=429, headers={"retry-after": "30"}, type="requests", code="rate_limit_exceeded"
    )
    response = chat(http, "primary")
    assert response.status_code == 502
    assert int(response.headers["x-lockgate-attempts"]) >= 4


def test_the_deadline_bounds_the_whole_request(http: httpx.Client, upstreams: dict[str, FakeOpenAI]) -> None:
    upstreams["a"].behave(delay=3)
    started = time.monotonic()
    response = chat(http, "slow")
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert 0.5 <= elapsed < 2


def test_a_stream_failing_before_its_first_event_fails_over(
    gateway: GatewayServer, upstreams: dict[str, FakeOpenAI]
) -> None:
    upstreams["a"].behave(die_after=0)
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model="pair", messages=[{"role": "user", "content": "hello there"}], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    assert text == "Echo: hello there"
    assert raw.headers["x-lockgate-deployment"] == "b"
    assert raw.headers["x-lockgate-attempts"] == "2"


def test_a_stream_is_never_retried_once_it_started(
    gateway: GatewayServer, upstreams: dict[str, FakeOpenAI]
) -> None:
    upstreams["a"].behave(die_after=3)
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model="pair", messages=[{"role": "user", "content": "hello there"}], stream=True
        )
        pieces: list[str] = []

        def read_all() -> None:
            for chunk in raw.parse():
                pieces.append(chunk.choices[0].delta.content or "" if chunk.choices else "")

        with pytest.raises(openai.APIError):
            read_all()
    assert raw.headers["x-lockgate-attempts"] == "1"
    assert "".join(pieces)  # the client got the beginning
    assert not upstreams["b"].requests


def test_anthropic_clients_get_failover_too(gateway: GatewayServer, upstreams: dict[str, FakeOpenAI]) -> None:
    upstreams["a"].behave(status=500)
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.api_key, max_retries=0) as sdk:
        message = sdk.messages.create(
            model="pair", max_tokens=50, messages=[{"role": "user", "content": "hello there"}]
        )
        assert message.content[0].text == "Echo: hello there"  # type: ignore[union-attr]
        upstreams["a"].behave(die_after=0)
        with sdk.messages.stream(
            model="pair", max_tokens=50, messages=[{"role": "user", "content": "hello there"}]
        ) as stream:
            assert stream.get_final_text() == "Echo: hello there"


def test_embeddings_fail_over(http: httpx.Client, upstreams: dict[str, FakeOpenAI]) -> None:
    upstreams["a"].behave(status=500)
    response = http.post("/embeddings", json={"model": "embed-pair", "input": "hi"})
    assert response.status_code == 200
    assert served(response) == ("embed-b", 2)
    assert len(response.json()["data"][0]["embedding"]) == 1536


def test_a_deployment_cooling_down_after_a_429_is_answered_429_without_a_call(
    http: httpx.Client, upstreams: dict[str, FakeOpenAI]
) -> None:
    upstreams["a"].behave(
        status=429, headers={"retry-after": "0.4"}, type="requests", code="rate_limit_exceeded"
    )
    first = chat(http, "no-retry")
    assert first.status_code == 429
    upstreams["a"].reset()
    second = chat(http, "no-retry")  # cooling down for the rest of the upstream's hint: no call
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert second.headers["retry-after"] == "1"
    assert not upstreams["a"].requests
    time.sleep(0.5)
    assert chat(http, "no-retry").status_code == 200


def test_an_open_breaker_keeps_requests_off_a_failing_deployment(fakes: dict[str, FakeOpenAI]) -> None:
    a, b = fakes["a"], fakes["b"]
    a.reset()
    b.reset()
    config = {
        "resilience": {"retry": FAST_RETRY},
        "health": {"breaker": {"failures": 2, "window": 60, "cooldown": 60}, "outlier": {"enabled": False}},
        "models": {"pair": {"deployments": [deployment(a, "a"), deployment(b, "b")]}},
    }
    a.behave(status=500)
    with (
        GatewayServer(config) as server,
        httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {server.api_key}"}
        ) as client,
    ):
        results = [served(chat(client, "pair")) for _ in range(10)]
        assert all(name == "b" for name, _ in results)
        assert len(a.requests) == 2  # then the breaker opened: no more calls to a
        assert [attempts for _, attempts in results].count(1) >= 8
        health = {entry["id"]: entry for entry in server.gateway.health.snapshot()}
        assert health["a"]["state"] == "open"
    a.reset()
