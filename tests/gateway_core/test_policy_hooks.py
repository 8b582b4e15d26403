"""Per-request policy hooks: a policy can reject, and every admitted request is settled exactly once."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from gateway_core import GatewayError, RequestContext, hookimpl
from gateway_core.testing import GatewayServer

CONFIG = {
    "models": {
        "fast": {"deployments": [{"provider": "mock"}]},
        "slow": {"deployments": [{"provider": "mock", "options": {"chunks": 50, "latency_ms": 40}}]},
        "slow-answer": {"deployments": [{"provider": "mock", "options": {"latency_ms": 3000}}]},
    }
}


class Recorder:
    """A policy plugin: rejects prompts containing "forbidden", records settlements."""

    def __init__(self) -> None:
        self.checked: list[str] = []
        self.settled: list[tuple[str, int, Any]] = []
        self.lock = threading.Lock()

    @hookimpl
    async def lockgate_policy_check(self, ctx: RequestContext) -> None:
        self.checked.append(ctx.request_id)
        ctx.state["recorder"] = "reserved"
        if "forbidden" in str(ctx.body.get("messages")):
            raise GatewayError(
                429, "Budget exhausted.", type="rate_limit_error", headers={"Retry-After": "30"}
            )

    @hookimpl
    def lockgate_policy_settle(self, ctx: RequestContext) -> None:
        with self.lock:
            usage = ctx.usage.total_tokens if ctx.usage else None
            self.settled.append((ctx.state.get("recorder", "?"), ctx.status, usage))

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.settled) >= count:
                    return
            time.sleep(0.01)
        raise AssertionError(f"{len(self.settled)} settlements, expected {count}")


@pytest.fixture
def policy_server() -> Any:
    recorder = Recorder()
    with GatewayServer(CONFIG, extra_plugins=[("recorder", recorder)]) as server:
        yield server, recorder


def test_policy_rejection_reaches_the_client_with_retry_after(policy_server: Any) -> None:
    server, recorder = policy_server
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "forbidden words"}]
        )
    assert info.value.response.headers["retry-after"] == "30"
    assert info.value.body == {
        "message": "Budget exhausted.",
        "type": "rate_limit_error",
        "param": None,
        "code": None,
    }
    recorder.wait_for(1)
    assert recorder.settled == [("reserved", 429, None)]


def test_successful_calls_are_settled_with_their_usage(policy_server: Any) -> None:
    server, recorder = policy_server
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
    client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "one two three"}])
    list(
        client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "a b"}], stream=True
        )
    )
    recorder.wait_for(2)
    assert sorted(recorder.settled) == [("reserved", 200, 4), ("reserved", 200, 6)]


def test_requests_rejected_before_the_policy_stage_are_not_settled(policy_server: Any) -> None:
    server, recorder = policy_server
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    time.sleep(0.1)
    assert recorder.checked == [] and recorder.settled == []


async def test_client_leaving_mid_stream_is_settled_as_cancelled(policy_server: Any) -> None:
    server, recorder = policy_server
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "x " * 100}]}
    async with (
        httpx.AsyncClient(headers={"Authorization": f"Bearer {server.api_key}"}) as client,
        client.stream("POST", f"{server.base_url}/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            break
    await asyncio.to_thread(recorder.wait_for, 1)
    [(state, status, tokens)] = recorder.settled
    assert (state, status) == ("reserved", 499)
    assert tokens is not None and tokens > 0  # the prompt and what was streamed, as estimated


async def test_client_leaving_before_the_answer_is_settled_as_cancelled(policy_server: Any) -> None:
    server, recorder = policy_server
    body = {"model": "slow-answer", "messages": [{"role": "user", "content": "hello"}]}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {server.api_key}"}) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{server.base_url}/chat/completions", json=body, timeout=0.3)
    started = time.monotonic()
    await asyncio.to_thread(recorder.wait_for, 1)
    assert time.monotonic() - started < 2.5, "the cancel must not wait for the slow answer"
    assert recorder.settled == [("reserved", 499, None)]


class Gate:
    """A second policy plugin: rejects prompts containing "closed" with its own error."""

    def __init__(self) -> None:
        self.checked: list[str] = []

    @hookimpl
    def lockgate_policy_check(self, ctx: RequestContext) -> None:
        self.checked.append(ctx.request_id)
        if "closed" in str(ctx.body.get("messages")):
            raise GatewayError(403, "The gate is closed.", type="permission_error")


def test_every_policy_is_checked_and_the_first_rejection_in_hook_order_answers() -> None:
    recorder, gate = Recorder(), Gate()
    plugins = [("recorder", recorder), ("gate", gate)]
    with GatewayServer(CONFIG, extra_plugins=plugins) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "forbidden and closed"}]
            )
        # pluggy calls the plugin registered last first: the gate answers, the recorder ran too.
        assert info.value.status_code == 403
        assert info.value.body["message"] == "The gate is closed."  # type: ignore[index]
        assert len(recorder.checked) == len(gate.checked) == 1
        recorder.wait_for(1)
        assert recorder.settled == [("reserved", 403, None)]
