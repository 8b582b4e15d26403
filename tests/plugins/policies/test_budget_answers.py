"""A budget holds against an upstream that ignores ``max_tokens``: streams end at the output tokens
reserved (in the client's dialect), and complete answers are charged no more than reserved."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest

from gateway_core.limits import Period, Window
from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text_block
from tests.fakes.openai_upstream import split_reply
from tests.plugins.policies.conftest import settled, used

#: Fifty words: the fake reports fifty output tokens, and streams them in fifty pieces.
LONG_REPLY = " ".join(f"w{number}" for number in range(50))
#: What five output tokens (the first five streamed pieces) say.
FIRST_FIVE = "".join(split_reply(LONG_REPLY, 50)[:5])
#: $1000 per million output tokens: $0.001 a token, so max_tokens 5 reserves $0.005.
PRICE = {"input": 0, "output": 1000}
HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]
#: The model the gateway serves (and its name on the OpenAI fake).
MODEL = "gpt-4o-mini"


@pytest.fixture
def runaway() -> Iterator[FakeOpenAI]:
    """An upstream that answers fifty tokens whatever ``max_tokens`` says."""
    with FakeOpenAI() as fake:
        fake.behave(reply=LONG_REPLY, chunks=50)
        yield fake


def budget_gateway(
    serve: Callable[..., GatewayServer], fake: FakeOpenAI | FakeAnthropic, usd: str
) -> tuple[GatewayServer, str, str]:
    name, key = f"capped-{uuid.uuid4().hex[:8]}", f"lg-{uuid.uuid4().hex}"
    if isinstance(fake, FakeOpenAI):
        provider, base_url, upstream = "openai", fake.base_url, MODEL
    else:
        provider, base_url, upstream = "anthropic", fake.url, "claude-sonnet-4-5"
    deployment = {"provider": provider, "base_url": base_url, "api_key": fake.api_key, "price": PRICE}
    data = {
        "server": {"graceful_timeout": 2},
        "models": {MODEL: {"deployments": [{**deployment, "model": upstream}]}},
        "plugins": {
            "config_keys": {"keys": [{"name": name, "key": key}]},
            "budgets": {"defaults": {"key": {"cost": {"total": usd}}}},
        },
    }
    return serve(data), name, key


def charged(server: GatewayServer, name: str) -> int:
    """Nano-dollars the key's total budget has counted, once the settlements are written."""
    settled(server)
    return used(server, f"bq:key:config_keys:{name}", Window("cost:total", 10**9, Period.TOTAL))


async def test_complete_answers_are_charged_no_more_than_reserved(
    serve: Callable[..., GatewayServer], runaway: FakeOpenAI
) -> None:
    runaway.behave(reply=LONG_REPLY, delay=0.3)  # all twenty are admitted before any is settled
    server, name, key = await asyncio.to_thread(budget_gateway, serve, runaway, "0.10")
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key=key, max_retries=0) as client:
        answers = await asyncio.gather(
            *(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5) for _ in range(20))
        )
        assert all(answer.usage is not None and answer.usage.completion_tokens == 50 for answer in answers)
        assert await asyncio.to_thread(charged, server, name) == 100_000_000  # $0.10, not $1.00
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
    assert refused.value.response.json()["error"]["message"].startswith(
        f"Budget exceeded for key '{name}' on cost in total: Limit $0.10, Used $0.10,"
    )


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_stream_ends_at_the_output_tokens_reserved(
    serve: Callable[..., GatewayServer], runaway: FakeOpenAI, include_usage: bool
) -> None:
    server, name, key = budget_gateway(serve, runaway, "0.10")
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=10) as client:
        chunks = list(
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, stream=True, **options)
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FIRST_FIVE
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    usage = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage) == 1 and usage[0].completion_tokens == 5
        assert chunks[-1].usage is not None and chunks[-1].choices == []
    else:
        assert usage == []
    assert charged(server, name) == 5_000_000  # five tokens: $0.005, not $0.05


def test_an_anthropic_stream_ends_with_max_tokens(
    serve: Callable[..., GatewayServer], runaway: FakeOpenAI
) -> None:
    server, name, key = budget_gateway(serve, runaway, "0.10")
    client = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=10)
    with client, client.messages.stream(model=MODEL, max_tokens=5, messages=HELLO) as stream:
        events = list(stream)
        message = stream.get_final_message()
    assert message.stop_reason == "max_tokens"
    assert "".join(block.text for block in message.content if block.type == "text") == FIRST_FIVE
    assert message.usage.output_tokens == 5
    kinds = [event.type for event in events]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert charged(server, name) == 5_000_000


def test_an_anthropic_answer_is_charged_no_more_than_reserved(
    serve: Callable[..., GatewayServer], runaway: FakeOpenAI
) -> None:
    server, name, key = budget_gateway(serve, runaway, "0.10")
    with anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=10) as client:
        message = client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)
    assert message.usage.output_tokens == 50  # what the upstream answered and reported
    assert charged(server, name) == 5_000_000


def test_a_stream_without_a_budget_is_relayed_whole(
    serve: Callable[..., GatewayServer], runaway: FakeOpenAI
) -> None:
    name, key = f"free-{uuid.uuid4().hex[:8]}", f"lg-{uuid.uuid4().hex}"
    deployment = {"provider": "openai", "base_url": runaway.base_url, "api_key": runaway.api_key}
    data = {
        "models": {"gpt-4o-mini": {"deployments": [deployment]}},
        "plugins": {"config_keys": {"keys": [{"name": name, "key": key}]}},
    }
    server = serve(data)
    with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=10) as client:
        stream = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, stream=True)
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 50
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]


def test_a_native_anthropic_stream_ends_with_max_tokens(serve: Callable[..., GatewayServer]) -> None:
    with FakeAnthropic() as claude:
        claude.behave(chunks=50)
        claude.enqueue(Reply([text_block(LONG_REPLY)]))  # fifty words, whatever max_tokens says
        server, name, key = budget_gateway(serve, claude, "0.10")
        client = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=10)
        with client, client.messages.stream(model=MODEL, max_tokens=5, messages=HELLO) as stream:
            kinds = [event.type for event in stream]
            message = stream.get_final_message()
    assert message.stop_reason == "max_tokens"
    assert "".join(block.text for block in message.content if block.type == "text") == FIRST_FIVE
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert message.usage.output_tokens == 5
    assert charged(server, name) == 5_000_000
