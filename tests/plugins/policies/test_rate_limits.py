"""Rate limits through a real gateway and the official SDK: RPM, TPM and parallel requests per key,
organization and model; OpenAI's headers and errors; global limits over Redis; Redis outages."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from gateway_core.limits import Window
from gateway_core.testing import GatewayServer
from tests.plugins.policies.conftest import settled, used
from tests.plugins.policies.redis_server import RedisServer
from tests.waiting import eventually_async

HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def secret() -> str:
    return f"lg-{uuid.uuid4().hex}"


def config(
    keys: list[dict[str, Any]], *, redis: dict[str, Any] | None = None, **options: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"graceful_timeout": 2},
        "models": {
            "mock-echo": {"deployments": [{"provider": "mock"}]},
            "mock-slow": {"deployments": [{"provider": "mock", "options": {"latency_ms": 400}}]},
            "mock-shared-a": {"deployments": [{"provider": "mock"}]},
            "mock-shared-b": {"deployments": [{"provider": "mock"}]},
        },
        "plugins": {"config_keys": {"keys": keys}, "rate_limits": options},
    }
    if redis is not None:
        data["redis"] = redis
    return data


def sdk(server: GatewayServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=10)


def chat(server: GatewayServer, key: str, model: str = "mock-echo", **extra: Any) -> httpx.Headers:
    """One call through the SDK; the answer's headers."""
    with sdk(server, key) as client:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=HELLO, **extra)
    raw.parse()
    return raw.headers


def refusal(server: GatewayServer, key: str, model: str = "mock-echo", **extra: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        chat(server, key, model, **extra)
    return caught.value


def test_rpm_per_key_refuses_with_openais_error_and_headers(serve: Callable[..., GatewayServer]) -> None:
    name, key = unique("rpm"), secret()
    server = serve(config([{"name": name, "key": key, "rpm": 2}]))
    first = chat(server, key)
    assert first["x-ratelimit-limit-requests"] == "2"
    assert first["x-ratelimit-remaining-requests"] == "1"
    assert first["x-ratelimit-reset-requests"] == "30s"
    second = chat(server, key)
    assert second["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"59\.\d+s|1m0s", second["x-ratelimit-reset-requests"])  # 60 s, less the time passed

    error = refusal(server, key)
    assert isinstance(error, openai.RateLimitError)
    body = error.response.json()["error"]
    assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded"
    assert re.fullmatch(
        rf"Rate limit reached for key '{name}' on requests per min \(RPM\): Limit 2, Used 2, Requested 1\. "
        r"Please try again in (29\.\d+|30)s\.",
        body["message"],
    ), body["message"]
    headers = error.response.headers
    assert headers["retry-after"] == "30"
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"\d+(\.\d+)?s|1m0s", headers["x-ratelimit-reset-requests"])


def test_tpm_reserves_the_worst_case_and_settles_the_real_usage(serve: Callable[..., GatewayServer]) -> None:
    name, key = unique("tpm"), secret()
    server = serve(config([{"name": name, "key": key, "tpm": 1000}]))
    first = chat(server, key, max_tokens=600)
    assert first["x-ratelimit-limit-tokens"] == "1000"
    reserved = 1000 - int(first["x-ratelimit-remaining-tokens"])
    assert 600 < reserved < 700  # max_tokens plus the estimated prompt
    settled(server)
    # The mock counts words: "Hello there" in, "Hello there" out.
    tokens = Window("tokens", 1000, 60)
    assert used(server, f"rl:key:config_keys:{name}", tokens) == 4
    # Without the settlement this second reservation would not fit in the minute.
    second = chat(server, key, max_tokens=600)
    assert int(second["x-ratelimit-remaining-tokens"]) < 1000 - 600


def test_a_request_larger_than_the_tpm_limit_is_refused_without_retry_after(
    serve: Callable[..., GatewayServer],
) -> None:
    name, key = unique("large"), secret()
    server = serve(config([{"name": name, "key": key, "tpm": 50}]))
    error = refusal(server, key, max_tokens=100)
    assert error.status_code == 429
    body = error.response.json()["error"]
    assert body["type"] == "tokens" and body["code"] == "rate_limit_exceeded"
    assert body["message"].startswith(f"Request too large for key '{name}' on tokens per min (TPM): Limit 50")
    assert "retry-after" not in error.response.headers


def test_defaults_apply_to_keys_without_limits_of_their_own(serve: Callable[..., GatewayServer]) -> None:
    plain, vip = secret(), secret()
    keys = [{"name": unique("plain"), "key": plain}, {"name": unique("vip"), "key": vip, "rpm": 3}]
    server = serve(config(keys, defaults={"rpm": 1}))
    chat(server, plain)
    assert refusal(server, plain).status_code == 429
    for _ in range(3):
        chat(server, vip)
    assert refusal(server, vip).status_code == 429


def test_model_limits_are_shared_by_all_callers_of_each_model(serve: Callable[..., GatewayServer]) -> None:
    one, two = secret(), secret()
    keys = [{"name": unique("one"), "key": one}, {"name": unique("two"), "key": two}]
    server = serve(config(keys, models={"mock-shared-*": {"rpm": 1}}))
    chat(server, one, "mock-shared-a")
    error = refusal(server, two, "mock-shared-a")
    assert (
        "for model 'mock-shared-a' (all callers) on requests per min"
        in error.response.json()["error"]["message"]
    )
    chat(server, two, "mock-shared-b")  # each model has its own counter
    chat(server, two, "mock-echo")  # models the pattern does not match are not limited


async def test_max_parallel_refuses_while_the_slots_are_busy(serve: Callable[..., GatewayServer]) -> None:
    name, key = unique("parallel"), secret()
    server = await asyncio.to_thread(serve, config([{"name": name, "key": key, "max_parallel": 1}]))
    body = {"model": "mock-slow", "messages": HELLO}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        url = f"{server.base_url}/chat/completions"
        slow = asyncio.ensure_future(client.post(url, json=body))
        deployment = server.gateway.models["mock-slow"].deployments[0]
        await eventually_async(lambda: deployment.in_flight == 1, what="the slow request holding its slot")
        busy = await client.post(url, json=body)
        assert busy.status_code == 429
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["message"].startswith(
            f"Concurrency limit reached for key '{name}': Limit 1 requests in parallel."
        )
        assert (await slow).status_code == 200
        await asyncio.to_thread(settled, server)
        assert (await client.post(url, json={**body, "model": "mock-echo"})).status_code == 200


def test_requests_refused_here_do_not_count(serve: Callable[..., GatewayServer]) -> None:
    name, key = unique("refused"), secret()
    server = serve(config([{"name": name, "key": key, "rpm": 1, "models": ["mock-echo"]}]))
    with pytest.raises(openai.PermissionDeniedError):  # refused before the policies: never counted
        chat(server, key, "mock-slow")
    chat(server, key)


def test_two_gateways_on_one_redis_keep_one_global_limit(
    serve: Callable[..., GatewayServer], redis_url: str
) -> None:
    name, key = unique("global"), secret()
    prefix = f"lockgate-test-{uuid.uuid4().hex[:12]}"
    shared = config([{"name": name, "key": key, "rpm": 5}], redis={"url": redis_url})
    gateways = [serve(shared, prefix=prefix), serve(shared, prefix=prefix)]

    def call(index: int) -> int:
        try:
            chat(gateways[index % 2], key)
        except openai.RateLimitError:
            return 429
        return 200

    statuses = [call(index) for index in range(12)]
    assert statuses.count(200) == 5
    assert statuses[:5] == [200] * 5  # the sixth request, on either gateway, is the first refused


def test_rate_limits_and_budget_cost_at_most_one_redis_round_trip_before_and_one_after_a_call(
    serve: Callable[..., GatewayServer], redis_url: str
) -> None:
    name, key = unique("trips"), secret()
    data = config([{"name": name, "key": key, "rpm": 100, "tpm": 100_000}], redis={"url": redis_url})
    data["plugins"]["budgets"] = {"defaults": {"key": {"requests": {"day": 100}, "tokens": {"day": 10**6}}}}
    server = serve(data)
    redis = server.gateway.counters.redis
    assert redis is not None
    before = redis.round_trips
    for _ in range(5):
        headers = chat(server, key)
        assert headers["x-ratelimit-limit-requests"] == "100"
    settled(server)
    # The checks of both policies share one, and so do both settlements (which often ride along
    # with the next request's checks).
    assert 5 < redis.round_trips - before <= 10
    assert used(server, f"rl:key:config_keys:{name}", Window("requests", 100, 60)) == 5


async def test_concurrent_requests_on_two_gateways_never_pass_the_global_limit(
    serve: Callable[..., GatewayServer], redis_url: str
) -> None:
    name, key = unique("burst"), secret()
    prefix = f"lockgate-test-{uuid.uuid4().hex[:12]}"
    shared = config([{"name": name, "key": key, "rpm": 7}], redis={"url": redis_url})
    gateways = [await asyncio.to_thread(serve, shared, prefix) for _ in range(2)]
    body = {"model": "mock-echo", "messages": HELLO}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=20) as client:
        answers = await asyncio.gather(
            *(client.post(f"{gateways[i % 2].base_url}/chat/completions", json=body) for i in range(40))
        )
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) == 7 and statuses.count(429) == 33


# --- Redis outages -------------------------------------------------------------------------------------------


def ready(server: GatewayServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/ready", timeout=5).json()
    return body


def test_an_outage_in_open_mode_keeps_serving_with_limits_per_worker(
    own_redis: RedisServer, serve: Callable[..., GatewayServer]
) -> None:
    name, key = unique("open"), secret()
    redis = {"url": own_redis.url, "timeout": 0.2, "on_outage": "open"}
    server = serve(config([{"name": name, "key": key, "rpm": 3}], redis=redis))
    chat(server, key)
    assert ready(server)["limits"]["state"] == "ok"
    own_redis.kill()
    started = time.monotonic()
    for _ in range(3):  # a fresh in-memory window: the worker's own limit of 3
        chat(server, key)
    assert refusal(server, key).status_code == 429
    assert time.monotonic() - started < 5, "an outage must not slow requests down"
    body = ready(server)
    assert body["status"] == "degraded"
    assert body["limits"]["state"] == "fallback"
    assert body["limits"]["fallbacks"] >= 4 and body["limits"]["outages"] == 1


def test_an_outage_in_closed_mode_refuses_with_503_then_recovers(
    own_redis: RedisServer, serve: Callable[..., GatewayServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway_core.store import kv

    monkeypatch.setattr(kv, "PROBE_SECONDS", 0.05)
    name, key = unique("closed"), secret()
    redis = {"url": own_redis.url, "timeout": 0.2, "on_outage": "closed"}
    server = serve(config([{"name": name, "key": key, "rpm": 100}], redis=redis))
    chat(server, key)
    own_redis.kill()
    for _ in range(2):
        error = refusal(server, key)
        assert error.status_code == 503
        assert error.response.json()["error"] == {
            "message": "Rate limits and budgets cannot be checked right now: their store is unreachable. "
            "Retry shortly.",
            "type": "server_error",
            "param": None,
            "code": "limits_unavailable",
        }
        assert error.response.headers["retry-after"] == "1"
    limits = ready(server)["limits"]
    assert limits["state"] == "refusing" and limits["refusals"] == 2
    own_redis.start()
    deadline = time.monotonic() + 10
    while ready(server)["limits"]["state"] != "ok":
        assert time.monotonic() < deadline, "the gateway did not go back to Redis"
        time.sleep(0.05)
    chat(server, key)
