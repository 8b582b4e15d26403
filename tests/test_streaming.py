"""Streams that go wrong: an upstream dying mid-stream, and clients that leave before the end."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI


def _marked_messages() -> tuple[str, list[ChatCompletionMessageParam]]:
    """A message carrying a unique marker, to find this test's request among the fake's records."""
    marker = f"marker-{uuid.uuid4().hex}"
    return marker, [{"role": "user", "content": f"tell me a long story {marker}"}]


# --- the upstream dies mid-stream -------------------------------------------------------------------------


@pytest.mark.parametrize("abrupt", [True, False], ids=["connection-reset", "body-ends-without-done"])
def test_upstream_dying_mid_stream_raises_in_the_sdk(
    client: openai.OpenAI, fake: FakeOpenAI, abrupt: bool
) -> None:
    fake.behave(reply="a reply that will never be finished", chunks=6, die_after=3, abrupt=abrupt)
    received: list[ChatCompletionChunk] = []

    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        received.extend(stream)  # keeps what came before the error

    assert len(received) == 3  # the role chunk and two content chunks made it through
    assert "upstream" in caught.value.message
    assert caught.value.code in ("upstream_error", "upstream_connection_error")


async def test_upstream_dying_mid_stream_in_the_async_sdk(
    async_client: openai.AsyncOpenAI, fake: FakeOpenAI
) -> None:
    fake.behave(chunks=6, die_after=2)

    stream = await async_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _chunk in stream:
            pass


def test_upstream_stalling_mid_stream_is_a_timeout_error(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.behave(chunks=4, chunk_interval=2.0)  # gpt-slow's read timeout is 0.5 s
    received: list[ChatCompletionChunk] = []
    started = time.monotonic()

    stream = client.chat.completions.create(
        model="gpt-slow", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        received.extend(stream)  # the fake sends one event, then stalls

    assert len(received) == 1
    assert caught.value.code == "upstream_timeout"
    assert time.monotonic() - started < 1.8


async def test_a_broken_stream_ends_with_an_error_event_not_done(
    gateway: GatewayServer, fake: FakeOpenAI
) -> None:
    fake.behave(chunks=6, die_after=3)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as http,
        http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"X-API-Key": gateway.api_key}
        ) as response,
    ):
        raw = await response.aread()

    assert response.status_code == 200  # the headers were sent before the upstream broke
    events = raw.split(b"\n\n")
    assert events[-1] == b""
    assert b"[DONE]" not in raw
    last = orjson.loads(events[-2].removeprefix(b"data: "))
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert last["error"]["type"] == "server_error"
    assert fake.api_key not in raw.decode()


# --- the client leaves ------------------------------------------------------------------------------------


async def test_client_leaving_a_stream_cancels_the_upstream_stream(
    gateway: GatewayServer, fake: FakeOpenAI
) -> None:
    fake.behave(reply="word " * 50, chunks=50, chunk_interval=0.1)  # about five seconds of stream
    marker, messages = _marked_messages()
    body = {"model": "gpt-4o-mini", "messages": messages, "stream": True}
    events = 0
    started = time.monotonic()
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as http,
        http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"X-API-Key": gateway.api_key}
        ) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events += 1
            if events == 2:
                break
    # Leaving the block closed the connection in the middle of the body.

    assert events == 2
    assert await fake.wait_aborted_async(marker, timeout=2.0), "the upstream stream kept running"
    assert time.monotonic() - started < 4.0
    assert fake.completed_streams == 0


async def test_client_giving_up_on_a_slow_answer_cancels_the_upstream_request(
    gateway: GatewayServer, fake: FakeOpenAI
) -> None:
    fake.behave(delay=5.0)
    marker, messages = _marked_messages()
    body = {"model": "gpt-4o-mini", "messages": messages}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/chat/completions", json=body, headers={"X-API-Key": gateway.api_key})

    assert await fake.wait_aborted_async(marker, timeout=2.0), "the upstream request kept running"


def test_sdk_client_timeout_cancels_the_upstream_request(gateway: GatewayServer, fake: FakeOpenAI) -> None:
    fake.behave(delay=5.0)
    marker, messages = _marked_messages()
    with (
        openai.OpenAI(base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0, timeout=0.3) as sdk,
        pytest.raises(openai.APITimeoutError),
    ):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert fake.wait_aborted(marker, timeout=2.0), "the upstream request kept running"


# --- many at once -----------------------------------------------------------------------------------------


async def test_concurrent_streams_do_not_mix(async_client: openai.AsyncOpenAI, fake: FakeOpenAI) -> None:
    fake.behave(chunks=6, chunk_interval=0.01)

    async def ask(index: int) -> str:
        stream = await async_client.chat.completions.create(
            model="gpt-4o-mini" if index % 2 else "mock-echo",
            messages=[{"role": "user", "content": f"question number {index}"}],
            stream=True,
        )
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    answers = await asyncio.wait_for(asyncio.gather(*(ask(i) for i in range(12))), timeout=10)

    for index, answer in enumerate(answers):
        prefix = "Echo: " if index % 2 else ""
        assert answer == f"{prefix}question number {index}"
