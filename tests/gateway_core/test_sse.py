"""The pass-through SSE tap: bytes untouched, usage read, truncation turned into an error event."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from gateway_core.errors import GatewayError
from gateway_core.redaction import Redactor
from gateway_core.sse import DONE, ChunkStream, PassthroughStream, error_event, sse_event


class FakeContent:
    def __init__(self, chunks: list[bytes], fail: BaseException | None) -> None:
        self.chunks = chunks
        self.fail = fail

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.fail is not None:
            raise self.fail


class FakeResponse:
    """Stands in for aiohttp.ClientResponse: the tap reads only content, release and close."""

    def __init__(self, chunks: list[bytes], fail: BaseException | None = None) -> None:
        self.content = FakeContent(chunks, fail)
        self.released = False
        self.closed = False

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


def chunk(
    content: str | None = None, *, usage: dict[str, int] | None = None, null_usage: bool = True
) -> bytes:
    payload: dict[str, object] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m"}
    payload["choices"] = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    if usage is not None:
        payload["usage"] = usage
    elif null_usage:
        payload["usage"] = None
    return sse_event(orjson.dumps(payload))


USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


async def collect(
    response: FakeResponse, forward_usage_chunk: bool = True
) -> tuple[bytes, PassthroughStream]:
    stream = PassthroughStream(response, provider="up", forward_usage_chunk=forward_usage_chunk)  # type: ignore[arg-type]
    out = b"".join([event async for event in stream])
    return out, stream


async def test_events_split_across_reads_are_forwarded_byte_for_byte() -> None:
    body = chunk("Hel") + chunk("lo") + chunk(usage=USAGE) + DONE
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    response = FakeResponse(pieces)
    out, stream = await collect(response)
    assert out == body
    assert stream.usage is not None and stream.usage.total_tokens == 12
    assert stream.error is None
    assert response.released


async def test_usage_chunk_the_client_did_not_ask_for_is_dropped() -> None:
    body = chunk("Hi") + chunk(usage=USAGE) + DONE
    out, stream = await collect(FakeResponse([body]), forward_usage_chunk=False)
    assert out == chunk("Hi") + DONE
    assert stream.usage is not None and stream.usage.completion_tokens == 7


async def test_usage_carried_by_a_content_chunk_is_read_and_kept() -> None:
    body = chunk("Hi", usage=USAGE) + DONE
    out, stream = await collect(FakeResponse([body]), forward_usage_chunk=False)
    assert out == body
    assert stream.usage is not None and stream.usage.prompt_tokens == 5


async def test_crlf_framing_is_accepted() -> None:
    body = (chunk("a") + DONE).replace(b"\n", b"\r\n")
    out, stream = await collect(FakeResponse([body]))
    assert out == chunk("a") + DONE
    assert stream.error is None


async def test_comments_pass_through() -> None:
    body = b": keep-alive\n\n" + chunk("a") + DONE
    out, _ = await collect(FakeResponse([body]))
    assert out == body


def decode_events(raw: bytes) -> list[bytes]:
    return [event for event in raw.split(b"\n\n") if event]


async def test_stream_ending_without_done_ends_with_an_error_event() -> None:
    response = FakeResponse([chunk("partial")])
    out, stream = await collect(response)
    events = decode_events(out)
    assert events[0] + b"\n\n" == chunk("partial")
    error = orjson.loads(events[-1].removeprefix(b"data: "))
    assert error["error"]["type"] == "server_error"
    assert "ended the stream early" in error["error"]["message"]
    assert stream.error is not None and stream.error.status == 502
    assert response.released


async def test_connection_reset_mid_stream_ends_with_an_error_event() -> None:
    response = FakeResponse([chunk("partial")], fail=aiohttp.ClientPayloadError("reset"))
    out, stream = await collect(response)
    error = orjson.loads(decode_events(out)[-1].removeprefix(b"data: "))
    assert error["error"]["code"] == "upstream_connection_error"
    assert stream.error is not None


async def test_read_timeout_mid_stream_is_a_504_error_event() -> None:
    response = FakeResponse([chunk("partial")], fail=TimeoutError())
    out, stream = await collect(response)
    error = orjson.loads(decode_events(out)[-1].removeprefix(b"data: "))
    assert error["error"]["code"] == "upstream_timeout"
    assert stream.error is not None and stream.error.status == 504


async def test_upstream_error_event_is_rebuilt_once_and_ends_the_stream() -> None:
    upstream_error = sse_event(
        b'{"error":{"message":"overloaded","type":"server_error","param":null,"code":null,"extra":1}}'
    )
    out, stream = await collect(FakeResponse([chunk("a") + upstream_error + chunk("b") + DONE]))
    events = decode_events(out)
    assert events[0] + b"\n\n" == chunk("a")
    assert len(events) == 2  # nothing after the error, no [DONE]
    assert orjson.loads(events[1].removeprefix(b"data: ")) == {
        "error": {"message": "overloaded", "type": "server_error", "param": None, "code": "upstream_error"}
    }
    assert stream.error is not None and stream.error.status == 502


async def test_an_upstream_error_event_is_scrubbed_of_the_deployments_secrets() -> None:
    key = "sk-upstream-key-5f1e9d3c"
    event = sse_event(orjson.dumps({"error": {"message": f"bad key {key}", "type": "auth", "code": key}}))
    stream = PassthroughStream(
        FakeResponse([chunk("a") + event]),  # type: ignore[arg-type]
        provider="up",
        forward_usage_chunk=True,
        redact=Redactor([key]),
    )
    out = b"".join([part async for part in stream])
    assert key.encode() not in out
    error = orjson.loads(decode_events(out)[-1].removeprefix(b"data: "))["error"]
    assert error == {"message": "bad key [redacted]", "type": "auth", "param": None, "code": "[redacted]"}


@pytest.mark.parametrize("status", [429, 502])
def test_error_event_is_openai_shaped(status: int) -> None:
    event = error_event(GatewayError(status, "nope", type="server_error", code="x"))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert orjson.loads(event[6:]) == {
        "error": {"message": "nope", "type": "server_error", "param": None, "code": "x"}
    }


async def test_an_event_of_a_shape_the_decoder_does_not_know_ends_a_translated_stream_with_an_error() -> None:
    async def decoded() -> AsyncIterator[dict[str, object]]:
        yield {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": []}
        delta: object = "not an object"
        yield {"delta": delta.get("text")}  # type: ignore[attr-defined]  # what a decoder meets

    stream = ChunkStream(decoded(), provider="up", include_usage=False)
    events = decode_events(b"".join([part async for part in stream]))
    assert len(events) == 2
    error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_malformed_event"
    assert stream.error is not None and stream.error.status == 502
