"""A fast fake OpenAI upstream for the benchmark: a raw asyncio protocol on uvloop.

It answers every ``POST .../chat/completions`` at once (no simulated latency) with precomputed
bytes: a chat completion JSON like OpenAI's, or, when the body asks for ``"stream":true``, a chunked
``text/event-stream`` of a handful of chunks ending with a usage chunk and ``[DONE]``. Keep-alive and
pipelined requests are supported; nothing is parsed beyond what framing needs, so the upstream costs
as little CPU as possible and is not the bottleneck of the benchmark.

Run: ``python -m tests.benchmarks.fake_upstream --port 9000``
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson

MODEL = "bench-model"

_COMPLETION = {
    "id": "chatcmpl-bench0000000000000000000000",
    "object": "chat.completion",
    "created": 1735689600,
    "model": MODEL,
    "system_fingerprint": "fp_bench",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 9,
        "total_tokens": 21,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
}

_STREAM_WORDS = ["Hello", "!", " How", " can", " I", " help", "?"]


def _chunk(delta: dict[str, object], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    payload = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": choices,
        "usage": usage,
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def stream_events() -> list[bytes]:
    """The SSE events of one streamed answer, like OpenAI's with ``include_usage``."""
    events = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": word}) for word in _STREAM_WORDS]
    events.append(_chunk({}, finish="stop"))
    events.append(_chunk({}, usage={"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}))
    events.append(b"data: [DONE]\n\n")
    return events


def _response(status: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = [b"HTTP/1.1 " + status]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_JSON_BODY = orjson.dumps(_COMPLETION)
JSON_RESPONSE = _response(
    b"200 OK",
    [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", str(len(_JSON_BODY)).encode()),
        (b"x-request-id", b"req_upstream_bench"),
        (b"openai-processing-ms", b"0"),
    ],
    _JSON_BODY,
)
STREAM_RESPONSE = _response(
    b"200 OK",
    [
        (b"Content-Type", b"text/event-stream; charset=utf-8"),
        (b"Transfer-Encoding", b"chunked"),
        (b"x-request-id", b"req_upstream_bench"),
    ],
    b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in stream_events()) + b"0\r\n\r\n",
)
_NOT_FOUND_BODY = b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}'
NOT_FOUND_RESPONSE = _response(
    b"404 Not Found",
    [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(_NOT_FOUND_BODY)).encode())],
    _NOT_FOUND_BODY,
)
_BAD_REQUEST = _response(b"400 Bad Request", [(b"Content-Length", b"0"), (b"Connection", b"close")])


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: frame requests by ``Content-Length`` and answer each at once."""

    __slots__ = ("_buffer", "_transport")

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        transport = self._transport
        assert transport is not None
        out = []
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head = buffer[:head_end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at + 2)
                try:
                    length = int(head[at + 17 : line_end if line_end >= 0 else None])
                except ValueError:
                    transport.write(_BAD_REQUEST)
                    transport.close()
                    return
            elif b"\r\ntransfer-encoding:" in head:
                transport.write(_BAD_REQUEST)  # the benchmark's clients always send Content-Length
                transport.close()
                return
            end = head_end + 4 + length
            if len(buffer) < end:
                break
            body = buffer[head_end + 4 : end]
            buffer = buffer[end:]
            request_line = head[: head.find(b"\r\n")]
            if not request_line.startswith(b"post ") or b"/chat/completions" not in request_line:
                out.append(NOT_FOUND_RESPONSE)
            elif b'"stream":true' in body or b'"stream": true' in body:
                out.append(STREAM_RESPONSE)
            else:
                out.append(JSON_RESPONSE)
        self._buffer = buffer
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
