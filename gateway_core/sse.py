"""Server-sent events in OpenAI's framing, and the pass-through tap over an upstream stream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from gateway_core.errors import GatewayError, upstream_error
from gateway_core.providers import ChatStream
from gateway_core.types import Usage

log = logging.getLogger("lockgate.sse")

DONE = b"data: [DONE]\n\n"
_NULL_USAGE = (b'"usage":null', b'"usage": null')


def sse_event(data: bytes) -> bytes:
    """Frame one JSON payload as an SSE ``data:`` event."""
    return b"data: " + data + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    """An OpenAI stream error event; the ``openai`` SDK raises ``APIError`` when it reads one."""
    return sse_event(error.openai_body())


def _event_data(event: bytes) -> bytes:
    """The joined ``data:`` lines of one event."""
    lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)


class PassthroughStream(ChatStream):
    """Forwards an OpenAI-compatible upstream stream event by event.

    The bytes of each event are passed on untouched; the tap only reads the usage chunk (parsed only
    when an event carries a non-null ``usage``) and drops it when the gateway asked for it on the
    client's behalf. An upstream that ends without ``[DONE]``, resets or times out mid-stream ends the
    client's stream with an OpenAI error event instead of a silent truncation.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        provider: str,
        forward_usage_chunk: bool,
        drop_empty_choices: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.response = response
        self.drop_empty_choices = drop_empty_choices
        self.provider = provider
        self.forward_usage_chunk = forward_usage_chunk
        self.headers = dict(headers or {})
        self.usage: Usage | None = None
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        buffer = b""
        try:
            async for chunk in self.response.content.iter_any():
                buffer += chunk
                if b"\r" in buffer:
                    buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                end = buffer.rfind(b"\n\n")
                if end < 0:
                    continue
                complete, buffer = buffer[: end + 2], buffer[end + 2 :]
                out = []
                for event in complete.split(b"\n\n"):
                    if not event:
                        continue
                    kept = self._tap(event)
                    if kept is not None:
                        out.append(kept + b"\n\n")
                        if kept.startswith((b'data: {"error"', b'data:{"error"')):
                            self.error = upstream_error(
                                f"The upstream provider {self.provider!r} sent an error."
                            )
                if out:
                    yield b"".join(out)
            if not self._complete and buffer.strip():
                kept = self._tap(buffer.strip(b"\n"))
                if kept is not None:
                    yield kept + b"\n\n"
            if not self._complete and self.error is None:
                log.warning("upstream %s ended the stream without [DONE]", self.provider)
                self.error = upstream_error(
                    f"The upstream provider {self.provider!r} ended the stream early."
                )
                yield error_event(self.error)
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = transport_error(exc, self.provider)
            log.warning("stream from %s failed: %s", self.provider, type(exc).__name__)
            self.error = error
            yield error_event(error)
        finally:
            self.close()

    def _tap(self, event: bytes) -> bytes | None:
        """Read usage and the end marker from one event; return the event to forward, or None."""
        if b"[DONE]" in event and _event_data(event) == b"[DONE]":
            self._complete = True
            return event
        if b'"usage"' not in event or any(null in event for null in _NULL_USAGE):
            if self.drop_empty_choices and b'"choices":[]' in event:
                return None
            return event
        try:
            payload = orjson.loads(_event_data(event))
        except orjson.JSONDecodeError:
            return event
        if isinstance(payload, dict):
            usage = Usage.from_openai(payload.get("usage"))
            if usage is not None:
                self.usage = usage
                if not self.forward_usage_chunk and not payload.get("choices"):
                    return None
        return event

    def close(self) -> None:
        # aiohttp pools the connection only when the body was read to the end, and closes it otherwise.
        self.response.release()


class SSEParser:
    """Incremental parser of ``text/event-stream`` bytes into ``(event, data)`` pairs.

    ``event`` is the ``event:`` field or None; ``data`` joins the ``data:`` lines with newlines.
    Comments, ``id:`` and ``retry:`` are skipped.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return []
        self._buffer = buffer[end + 2 :]
        return [parsed for block in buffer[:end].split(b"\n\n") if (parsed := _parse_block(block))]

    def flush(self) -> list[tuple[str | None, str]]:
        """The last event when the stream ended without a blank line."""
        block, self._buffer = self._buffer.strip(b"\n"), b""
        parsed = _parse_block(block) if block else None
        return [parsed] if parsed else []


def _parse_block(block: bytes) -> tuple[str | None, str] | None:
    event: str | None = None
    data: list[str] = []
    for line in block.decode("utf-8", "replace").split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if event is None and not data:
        return None
    return event, "\n".join(data)


class ChunkStream(ChatStream):
    """A stream built from canonical chunks (OpenAI ``chat.completion.chunk`` dicts).

    Translating providers hand over an async iterator of chunks, the last one carrying ``usage``
    with empty ``choices`` when the upstream reports usage. The usage chunk reaches the client only
    when it asked for it (``stream_options.include_usage``). A :class:`GatewayError` or a transport
    failure raised by the iterator ends the stream with an error event; ``on_close`` releases the
    upstream connection.
    """

    def __init__(
        self,
        source: AsyncIterator[dict[str, Any]],
        *,
        provider: str,
        include_usage: bool,
        on_close: Callable[[], None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._source = source
        self.provider = provider
        self.include_usage = include_usage
        self._on_close = on_close
        self.headers = dict(headers or {})
        self.usage: Usage | None = None
        self._closed = False

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in self._source:
                usage = chunk.get("usage")
                if usage:
                    self.usage = Usage.from_openai(usage)
                    if not chunk.get("choices") and not self.include_usage:
                        continue
                yield chunk
        except GatewayError as exc:
            self.error = exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.error = transport_error(exc, self.provider)
            log.warning("stream from %s failed: %s", self.provider, type(exc).__name__)
        finally:
            self.close()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks():
            yield sse_event(orjson.dumps(chunk))
        yield error_event(self.error) if self.error is not None else DONE

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close()


def transport_error(exc: BaseException, provider: str) -> GatewayError:
    """The client's error for a stream whose upstream timed out or broke after it started."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return upstream_error(
            f"The upstream provider {provider!r} timed out mid-stream.", status=504, code="upstream_timeout"
        )
    return upstream_error(
        f"The connection to the upstream provider {provider!r} broke mid-stream.",
        code="upstream_connection_error",
    )
