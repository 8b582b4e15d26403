"""Every request that reached the policies is finished exactly once (usage record, policy settlement,
parallel slot given back), however its connection ended: HTTP/1.0, ``Connection: close``, a client that
leaves mid-stream (then what was streamed is recorded and charged). Through hypercorn on a real socket,
the official SDKs, with counters in memory and in Redis."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from gateway_core.limits import Period, Window
from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.plugins.policies.conftest import REDIS_ENV, _cleanup, in_thread, settled, used

KEY = "lg-lifecycle-key-0123456789abcdef"
KEY_NAME = "lifecycle"
#: Requests in a row on a key with ``max_parallel: 2``: more than its slots, so a leaked slot shows.
IN_A_ROW = 4
#: A long answer streamed slowly, so a client can leave in its middle: 300 words of 5 to 7 characters.
LONG_REPLY = " ".join(f"word{index:03d}" for index in range(300))
#: $1 per million tokens in and out: the cost of a record is its token count in micro-dollars.
PRICE = {"input": 1, "output": 1}
#: The budget the key's tokens are counted against (never reached).
TOKEN_BUDGET = 10_000_000


@pytest.fixture(scope="module")
def anthropic_upstream() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def claude(anthropic_upstream: FakeAnthropic) -> Iterator[FakeAnthropic]:
    """The fake Anthropic API, streaming a long answer slowly."""
    anthropic_upstream.reset()
    anthropic_upstream.behave(chunks=60, chunk_interval=0.02)
    yield anthropic_upstream
    anthropic_upstream.reset()


def lifecycle_config(
    database: Path, fake: FakeOpenAI, claude: FakeAnthropic, redis_url: str | None = None
) -> dict[str, Any]:
    slow = {"chunks": 60, "latency_ms": 20}
    data: dict[str, Any] = {
        "server": {"graceful_timeout": 2},
        "database": {"url": f"sqlite://{database}"},
        "usage": {"batch_size": 8, "flush_seconds": 0.05},
        "models": {
            "mock-echo": {"deployments": [{"provider": "mock", "options": {"chunks": 5, "latency_ms": 2}}]},
            "mock-long": {
                "deployments": [
                    {"provider": "mock", "options": {"reply": LONG_REPLY, **slow}, "price": PRICE}
                ]
            },
            "gpt-4o-mini": {
                "deployments": [
                    {"provider": "openai", "base_url": fake.base_url, "api_key": fake.api_key, "price": PRICE}
                ]
            },
            "claude": {
                "deployments": [
                    {
                        "provider": "anthropic",
                        "base_url": claude.url,
                        "api_key": claude.api_key,
                        "model": "claude-sonnet-4-5",
                        "price": PRICE,
                    }
                ]
            },
        },
        "plugins": {
            "config_keys": {"keys": [{"name": KEY_NAME, "key": KEY, "max_parallel": 2}]},
            "rate_limits": {},
            "budgets": {"defaults": {"key": {"tokens": {"total": TOKEN_BUDGET}}}},
        },
    }
    if redis_url is not None:
        data["redis"] = {"url": redis_url}
    return data


@pytest.fixture(params=["memory", "redis"])
def lifecycle_gateway(
    request: pytest.FixtureRequest, tmp_path: Path, fake: FakeOpenAI, claude: FakeAnthropic
) -> Iterator[tuple[GatewayServer, Path]]:
    """A gateway with a usage log on SQLite and a key limited to 2 requests in parallel, its counters in
    memory or in the test Redis (under a prefix of its own, removed afterwards)."""
    from gateway_core.store.migrate import upgrade

    redis_url = None
    if request.param == "redis":
        redis_url = os.environ.get(REDIS_ENV)
        if not redis_url:
            pytest.skip(f"{REDIS_ENV} is not set")
    database = tmp_path / "lockgate.db"
    in_thread(lambda: upgrade(f"sqlite://{database}"))
    server = GatewayServer(lifecycle_config(database, fake, claude, redis_url), api_key=KEY)
    prefix = f"lockgate-test-{uuid.uuid4().hex[:12]}"
    if server.gateway.counters.redis is not None:
        server.gateway.counters.redis.prefix = prefix
    server.start()
    try:
        yield server, database
    finally:
        server.stop()
        if redis_url is not None:
            _cleanup(redis_url, prefix)


def raw_exchange(port: int, request_line: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """Send one request on a new connection and read until the server closes it: (status, raw answer)."""
    head = [request_line, "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    data = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            received = sock.recv(65536)
            if not received:
                break  # the server closed the connection: the exchange is over
            answer += received
        else:
            raise AssertionError("the server did not close the connection")
    return int(answer.split(b" ", 2)[1]), answer


def chat_body(stream: bool, text: str) -> bytes:
    return orjson.dumps(
        {"model": "mock-echo", "stream": stream, "messages": [{"role": "user", "content": text}]}
    )


def records(database: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as connection:
        return connection.execute(
            "SELECT request_id, status, stream, prompt_tokens, completion_tokens, error_type, cost, tokens_estimated"
            " FROM usage_records"
        ).fetchall()


def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        time.sleep(0.02)


def request_id(answer: bytes) -> str:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"x-request-id":
            return value.strip().decode()
    raise AssertionError("no x-request-id header")


CLOSING = {
    "http/1.0": ("POST /v1/chat/completions HTTP/1.0", {}),
    "connection-close": ("POST /v1/chat/completions HTTP/1.1", {"Connection": "close"}),
}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
@pytest.mark.parametrize("closing", sorted(CLOSING))
def test_requests_on_closing_connections_are_finished_and_free_their_slot(
    lifecycle_gateway: tuple[GatewayServer, Path], closing: str, stream: bool
) -> None:
    server, database = lifecycle_gateway
    request_line, extra = CLOSING[closing]
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **extra}
    statuses, ids = [], []
    for index in range(IN_A_ROW):
        status, answer = raw_exchange(
            server.port, request_line, headers, chat_body(stream, f"one two three four five {index}")
        )
        statuses.append(status)
        ids.append(request_id(answer))
        if stream and status == 200:
            assert b"data: [DONE]" in answer
    assert statuses == [200] * IN_A_ROW  # before the fix a stream kept its slot: 200, 200, 429, 429

    wait_for(lambda: len(records(database)) >= IN_A_ROW)
    settled(server)
    rows = records(database)
    assert sorted(row[0] for row in rows) == sorted(ids)  # exactly one record per request
    for _, status, streamed, prompt, completion, error_type, _, estimated in rows:
        assert (status, bool(streamed), error_type, bool(estimated)) == (200, stream, None, False)
        assert prompt == 6 and completion == 6  # the mock counts words: the usage of the whole answer


#: Content chunks a client reads before it closes the stream.
READ_CHUNKS = 8


def leave_openai_stream(server: GatewayServer, model: str) -> str:
    """Stream with the ``openai`` SDK and close after :data:`READ_CHUNKS` chunks: the text read."""
    text = ""
    with openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=10) as client:
        stream = client.chat.completions.create(
            model=model, stream=True, messages=[{"role": "user", "content": "tell me " + LONG_REPLY}]
        )
        read = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                read += 1
                if read == READ_CHUNKS:
                    break
        stream.close()
    return text


def leave_anthropic_stream(server: GatewayServer, model: str) -> str:
    """Stream with the ``anthropic`` SDK on /v1/messages and close after :data:`READ_CHUNKS` text deltas."""
    text = ""
    with anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=10) as client:
        stream = client.messages.create(
            model=model,
            max_tokens=1000,
            stream=True,
            messages=[{"role": "user", "content": "tell me " + LONG_REPLY}],
        )
        read = 0
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
                read += 1
                if read == READ_CHUNKS:
                    break
        stream.close()
    return text


CLIENTS = {"openai": leave_openai_stream, "anthropic": leave_anthropic_stream}


@pytest.mark.parametrize("model", ["mock-long", "gpt-4o-mini", "claude"])
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_a_stream_the_client_leaves_records_and_charges_what_was_streamed(
    lifecycle_gateway: tuple[GatewayServer, Path], fake: FakeOpenAI, client: str, model: str
) -> None:
    server, database = lifecycle_gateway
    fake.behave(reply=LONG_REPLY, chunks=60, chunk_interval=0.02)
    read = CLIENTS[client](server, model)
    assert read and len(read) < len(LONG_REPLY) / 2

    wait_for(lambda: len(records(database)) == 1)
    settled(server)
    [(_, status, streamed, prompt, completion, error_type, cost, estimated)] = records(database)
    assert (status, bool(streamed), error_type) == (499, True, "client_closed_request")
    assert estimated  # the record says its counts are the gateway's estimate
    if (client, model) == ("anthropic", "claude"):  # forwarded as is: Anthropic's own prompt count,
        assert prompt == 302  # sent at the start of its stream (the fake counts words)
    else:  # "tell me " and 300 words, about 2,500 characters: some 600 tokens as estimated
        assert 400 < prompt < 1000
    # The answer: at least what the client read (four characters a token), at most the whole reply.
    assert len(read) / 4 * 0.8 <= completion <= len(LONG_REPLY) / 4
    assert cost is not None and float(cost) == pytest.approx((prompt + completion) / 1_000_000)
    window = Window("tokens:total", TOKEN_BUDGET, Period.TOTAL)
    assert used(server, f"bq:key:config_keys:{KEY_NAME}", window) == prompt + completion
