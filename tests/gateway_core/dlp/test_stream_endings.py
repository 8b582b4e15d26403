"""How a filtered stream ends when it must stop early: a value to block, or a filter that fails on the
answer. The client gets everything before the stop, then an error event in its dialect; the stream
never raises (its headers are long sent)."""

from __future__ import annotations

import orjson
import pytest

from tests.gateway_core.dlp.helpers import session
from tests.gateway_core.dlp.test_streams import (
    TEXT,
    Events,
    anthropic_events,
    anthropic_text,
    characters,
    openai_events,
    openai_text,
    parsed,
    relayed,
)

BLOCK = {"direction": "response", "entities": {"EMAIL_ADDRESS": "block"}}
#: A filter that raises on every text of the answer.
FAILING = {"filters": {"broken": {}}, "direction": "response"}


async def test_openai_events_before_the_blocked_value_in_the_same_read_are_sent() -> None:
    dlp = await session(BLOCK)
    raw = await relayed(dlp, Events([b"".join(openai_events(characters(TEXT)))]))

    assert openai_text(raw) == "Write to "
    assert orjson.loads(parsed(raw)[-1][1])["error"]["code"] == "dlp_blocked"
    assert b"alice" not in raw


async def test_anthropic_events_before_the_blocked_value_in_the_same_read_are_sent() -> None:
    dlp = await session(BLOCK)
    raw = await relayed(dlp, Events([b"".join(anthropic_events(characters(TEXT)))], "anthropic"))

    names = [name for name, _ in parsed(raw)]
    assert names[:2] == ["message_start", "content_block_start"] and names[-1] == "error"
    assert anthropic_text(raw) == "Write to "
    assert b"alice" not in raw


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_a_filter_failing_on_the_answer_ends_the_stream_with_an_error_event(dialect: str) -> None:
    dlp = await session(FAILING)
    events = openai_events(["Hello"]) if dialect == "openai" else anthropic_events(["Hello"])
    stream = dlp.stream(Events(events, dialect))

    raw = b"".join([event async for event in stream])

    name, data = parsed(raw)[-1]
    error = orjson.loads(data)["error"]
    if dialect == "openai":
        assert error["code"] == "dlp_unavailable"
    else:
        assert (name, error["type"]) == ("error", "api_error")
    assert b"Hello" not in raw
    assert stream.error is not None and (stream.error.status, stream.error.code) == (503, "dlp_unavailable")


async def test_a_filter_failing_on_canonical_chunks_ends_them() -> None:
    dlp = await session(FAILING)
    stream = dlp.stream(Events(openai_events(["Hello"])))

    chunks = [chunk async for chunk in stream.chunks()]

    assert [chunk["choices"][0]["delta"] for chunk in chunks] == [{"role": "assistant", "content": ""}]
    assert stream.error is not None and stream.error.code == "dlp_unavailable"
