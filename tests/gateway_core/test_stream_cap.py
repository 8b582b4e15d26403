"""Streams ended at the output tokens admitted, whatever the upstream's bytes boundaries: the client
never gets half an event followed by the gateway's ending."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
import pytest

from gateway_core.gateway import Gateway
from gateway_core.providers import ChatStream
from gateway_core.sse import SSEParser
from gateway_core.stream_cap import cap_stream
from gateway_core.types import Dialect, RequestContext


def _frame(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def anthropic_events(words: int) -> bytes:
    out = _frame("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 3}}})
    out += _frame("content_block_start", {"type": "content_block_start", "index": 0})
    for number in range(words):
        delta = {"type": "text_delta", "text": f"w{number} "}
        out += _frame("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
    out += _frame("content_block_stop", {"type": "content_block_stop", "index": 0})
    out += _frame("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}})
    return out + _frame("message_stop", {"type": "message_stop"})


def openai_events(words: int) -> bytes:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    out = b""
    for number in range(words):
        choice = {"index": 0, "delta": {"content": f"w{number} "}, "finish_reason": None}
        out += b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\r\n\r\n"
    return out + b"data: [DONE]\r\n\r\n"


class RawStream(ChatStream):
    """An upstream's bytes in pieces of ``size``, cut anywhere (as a native pass-through yields them)."""

    def __init__(self, data: bytes, size: int, dialect: Dialect) -> None:
        self.data = data
        self.size = size
        self.dialect = dialect

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.size):
            yield self.data[start : start + self.size]


def context(cap: int) -> RequestContext:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": cap}
    ctx = RequestContext(cast(Gateway, None), "req", "chat", "openai", {}, body=body)
    ctx.output_cap = cap
    return ctx


async def relayed(stream: ChatStream) -> list[tuple[str | None, str]]:
    parser = SSEParser()
    events: list[tuple[str | None, str]] = []
    async for data in stream:
        events += parser.feed(data)
    assert not parser.flush(), "the stream ended inside an event"
    return events


@pytest.mark.parametrize("size", [1, 7, 50, 100_000])
async def test_an_anthropic_stream_cut_anywhere_ends_with_whole_events(size: int) -> None:
    ctx = context(5)
    stream = cap_stream(ctx, RawStream(anthropic_events(30), size, "anthropic"))
    events = await relayed(stream)
    datas = [orjson.loads(data) for _, data in events]  # every event is whole JSON
    texts = [d["delta"]["text"] for d in datas if d["type"] == "content_block_delta"]
    assert texts == ["w0 ", "w1 ", "w2 ", "w3 ", "w4 "]
    assert [name for name, _ in events[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
    assert datas[-2]["delta"]["stop_reason"] == "max_tokens" and datas[-2]["usage"]["output_tokens"] == 5
    assert stream.usage is not None and stream.usage.completion_tokens == 5
    assert stream.usage.estimated  # recorded as the gateway's count (tokens_estimated)


@pytest.mark.parametrize("size", [1, 13, 100_000])
async def test_an_openai_stream_cut_anywhere_ends_with_length_and_done(size: int) -> None:
    ctx = context(3)
    stream = cap_stream(ctx, RawStream(openai_events(10), size, "openai"))
    events = await relayed(stream)
    assert events[-1][1] == "[DONE]"
    chunks = [orjson.loads(data) for _, data in events[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["w0 ", "w1 ", "w2 ", None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["id"] == "chatcmpl-1"


async def test_without_a_cap_the_stream_is_the_upstreams() -> None:
    ctx = context(3)
    ctx.output_cap = None
    raw = RawStream(openai_events(10), 7, "openai")
    assert cap_stream(ctx, raw) is raw
