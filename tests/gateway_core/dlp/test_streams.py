"""Streamed answers through DLP: values split across chunks are caught, pseudonyms restored across
chunk boundaries, nothing held is lost, a log-only policy leaves the bytes alone."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_core.dlp.engine import DlpSession
from gateway_core.providers import ChatStream
from gateway_core.sse import SSEParser
from tests.gateway_core.dlp.helpers import session

TEXT = "Write to alice@example.com or bob@corp.example.org today."
REDACTED = "Write to [EMAIL_ADDRESS] or [EMAIL_ADDRESS] today."


class Events(ChatStream):
    """A stream of given SSE bytes (in ``dialect``)."""

    def __init__(self, events: list[bytes], dialect: str = "openai") -> None:
        self.events = events
        self.dialect = dialect  # type: ignore[assignment]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self.events:
            yield event


def openai_events(pieces: list[str], *, finish: bool = True, done: bool = True) -> list[bytes]:
    def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in pieces]
    if finish:
        events.append(chunk({}, "stop"))
    if done:
        events.append(b"data: [DONE]\n\n")
    return events


def anthropic_events(pieces: list[str], *, tool_pieces: list[str] = ()) -> list[bytes]:  # type: ignore[assignment]
    def frame(payload: dict[str, Any]) -> bytes:
        return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    events = [
        frame({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant"}}),
        frame({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    events += [
        frame({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
        for piece in pieces
    ]
    events.append(frame({"type": "content_block_stop", "index": 0}))
    if tool_pieces:
        start = {"type": "tool_use", "id": "toolu_1", "name": "send", "input": {}}
        events.append(frame({"type": "content_block_start", "index": 1, "content_block": start}))
        events += [
            frame(
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                }
            )
            for piece in tool_pieces
        ]
        events.append(frame({"type": "content_block_stop", "index": 1}))
    events.append(frame({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}}))
    events.append(frame({"type": "message_stop"}))
    return events


async def relayed(dlp: DlpSession, stream: ChatStream) -> bytes:
    wrapped = dlp.stream(stream)
    return b"".join([event async for event in wrapped])


def parsed(raw: bytes) -> list[tuple[str | None, str]]:
    parser = SSEParser()
    return parser.feed(raw) + parser.flush()


def openai_text(raw: bytes, key: str = "content") -> str:
    out = []
    for _, data in parsed(raw):
        if data == "[DONE]":
            continue
        for choice in orjson.loads(data).get("choices", []):
            out.append(choice["delta"].get(key) or "")
    return "".join(out)


def anthropic_text(raw: bytes, key: str = "text") -> str:
    out = []
    for _, data in parsed(raw):
        payload = orjson.loads(data)
        if payload["type"] == "content_block_delta":
            out.append(payload["delta"].get(key) or "")
    return "".join(out)


def characters(text: str) -> list[str]:
    return list(text)


async def test_a_value_split_across_chunks_is_redacted() -> None:
    dlp = await session({"direction": "response"})
    raw = await relayed(
        dlp, Events(openai_events(["Write to alice@exa", "mple.com", " or bob@corp.example.org today."]))
    )
    assert openai_text(raw) == "Write to [EMAIL_ADDRESS] or [EMAIL_ADDRESS] today."
    assert b"alice" not in raw and b"bob@" not in raw
    assert raw.endswith(b"data: [DONE]\n\n")
    assert dlp.ctx.dlp_findings == {("EMAIL_ADDRESS", "response", "redact"): 2}


async def test_one_character_per_chunk() -> None:
    dlp = await session({"direction": "response"})
    raw = await relayed(dlp, Events(openai_events(characters(TEXT))))
    assert openai_text(raw) == REDACTED
    assert b"alice" not in raw


async def test_text_before_a_possible_value_is_released_at_once() -> None:
    dlp = await session({"direction": "response"})
    stream = dlp.stream(Events(openai_events(["Hello there, write to ali", "ce@example.com"])))
    events = stream.__aiter__()
    await anext(events)  # the role chunk
    first = await anext(events)
    assert openai_text(first) == "Hello there, write to "  # only the unfinished word waits


async def test_what_is_held_goes_out_with_the_finish() -> None:
    dlp = await session({"direction": "response"})
    raw = await relayed(dlp, Events(openai_events(["mail alice@example.com"])))
    events = [orjson.loads(data) for _, data in parsed(raw) if data != "[DONE]"]
    finish = events[-1]["choices"][0]
    assert finish["finish_reason"] == "stop"
    assert finish["delta"]["content"] == "[EMAIL_ADDRESS]"


async def test_a_stream_that_ends_without_a_finish_still_releases_what_is_held() -> None:
    dlp = await session({"direction": "response"})
    raw = await relayed(dlp, Events(openai_events(["mail alice@example.com"], finish=False, done=False)))
    assert openai_text(raw) == "mail [EMAIL_ADDRESS]"


async def test_pseudonyms_are_restored_across_chunk_boundaries() -> None:
    dlp = await session({"entities": {"EMAIL_ADDRESS": "pseudonymize"}})
    body = {"messages": [{"role": "user", "content": "mail alice@example.com"}]}
    assert await dlp.filter_request("openai", "chat", body)
    assert body["messages"][0]["content"] == "mail [EMAIL_ADDRESS_1]"
    raw = await relayed(dlp, Events(openai_events(characters("Sent to [EMAIL_ADDRESS_1]."))))
    assert openai_text(raw) == "Sent to alice@example.com."


async def test_log_only_leaves_the_bytes_identical() -> None:
    dlp = await session({"direction": "both", "entities": {"*": "log"}})
    events = openai_events(characters(TEXT))
    raw = await relayed(dlp, Events(events))
    assert raw == b"".join(events)
    assert dlp.ctx.dlp_findings == {("EMAIL_ADDRESS", "response", "log"): 2}


async def test_a_blocked_value_ends_the_stream_with_an_error_before_it_is_sent() -> None:
    dlp = await session({"direction": "response", "entities": {"EMAIL_ADDRESS": "block"}})
    stream = dlp.stream(Events(openai_events(characters(TEXT))))
    raw = b"".join([event async for event in stream])
    assert b"alice" not in raw
    last = orjson.loads(parsed(raw)[-1][1])
    assert last["error"]["code"] == "dlp_blocked"
    assert "EMAIL_ADDRESS" in last["error"]["message"]
    assert stream.error is not None and stream.error.status == 400


async def test_anthropic_events_are_filtered_and_flushed_before_the_block_stops() -> None:
    dlp = await session({"direction": "response"})
    raw = await relayed(dlp, Events(anthropic_events(characters(TEXT)), "anthropic"))
    assert anthropic_text(raw) == REDACTED
    names = [name for name, _ in parsed(raw)]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert b"alice" not in raw


async def test_anthropic_tool_input_restores_json_escaped_values() -> None:
    dlp = await session({"entities": {"SECRET": "pseudonymize"}})
    body = {"messages": [{"role": "user", "content": 'use KEY{line one\nline "two"}'}]}
    await dlp.filter_request("anthropic", "chat", body)
    assert body["messages"][0]["content"] == "use [SECRET_1]"
    arguments = '{"secret": "[SECRET_1]"}'
    raw = await relayed(dlp, Events(anthropic_events(["ok"], tool_pieces=characters(arguments)), "anthropic"))
    restored = orjson.loads(anthropic_text(raw, "partial_json"))
    assert restored == {"secret": 'KEY{line one\nline "two"}'}


async def test_anthropic_blocked_value_ends_with_an_error_event() -> None:
    dlp = await session({"direction": "response", "entities": {"EMAIL_ADDRESS": "block"}})
    raw = await relayed(dlp, Events(anthropic_events(characters(TEXT)), "anthropic"))
    name, data = parsed(raw)[-1]
    assert name == "error"
    assert orjson.loads(data)["error"]["type"] == "invalid_request_error"
    assert b"alice" not in raw


async def test_canonical_chunks_are_filtered() -> None:
    dlp = await session({"direction": "response"})
    stream = dlp.stream(Events(openai_events(characters(TEXT), finish=False)))
    texts = [
        choice["delta"].get("content") or "" async for chunk in stream.chunks() for choice in chunk["choices"]
    ]
    assert "".join(texts) == REDACTED


async def test_tool_call_arguments_in_openai_chunks_are_filtered() -> None:
    dlp = await session({"direction": "response"})

    def chunk(arguments: str) -> bytes:
        call = {"index": 0, "function": {"arguments": arguments}}
        body = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}],
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    arguments = '{"to": "alice@example.com"}'
    events = [chunk(piece) for piece in characters(arguments)]
    events.append(
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n'
    )
    raw = await relayed(dlp, Events(events))
    joined = "".join(
        call["function"]["arguments"]
        for _, data in parsed(raw)
        for choice in orjson.loads(data)["choices"]
        for call in choice["delta"].get("tool_calls", [])
    )
    assert orjson.loads(joined) == {"to": "[EMAIL_ADDRESS]"}


async def test_hold_back_is_bounded() -> None:
    dlp = await session({"direction": "response", "stream_holdback_chars": 64})
    stream = dlp.stream(Events(openai_events(["KEY{" + "x" * 200, "}"], finish=True)))
    events = stream.__aiter__()
    await anext(events)
    first = openai_text(await anext(events))
    assert len(first) >= 200 + 4 - 64  # released past the bound even though it could still match


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(TEXT) - 1), max_size=12, unique=True))
async def test_any_split_gives_the_whole_text_answer(dialect: str, cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(TEXT)]
    pieces = [TEXT[a:b] for a, b in itertools.pairwise(bounds)]
    dlp = await session({"direction": "response"})
    if dialect == "openai":
        assert openai_text(await relayed(dlp, Events(openai_events(pieces)))) == REDACTED
    else:
        assert anthropic_text(await relayed(dlp, Events(anthropic_events(pieces), "anthropic"))) == REDACTED
