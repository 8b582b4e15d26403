"""Server-sent events in OpenAI's framing, and the pass-through tap over an upstream stream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from gateway_core.errors import GatewayError, upstream_error
from gateway_core.providers import ChatStream
from gateway_core.redaction import Redactor
from gateway_core.types import Usage

log = logging.getLogger("lockgate.sse")

DONE = b"data: [DONE]\n\n"


def sse_event(data: bytes) -> bytes:
    """Frame one JSON payload as an SSE ``data:`` event."""
    return b"data: " + data + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    """An OpenAI stream error event; the ``openai`` SDK raises ``APIError`` when it reads one."""
    return sse_event(error.openai_body())


def event_data(event: bytes) -> bytes:
    """The joined ``data:`` lines of one event."""
    if event.startswith(b"data: ") and b"\n" not in event:  # the usual event: one data line
        return event[6:]
    lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)


def malformed_event(provider: str) -> GatewayError:
    """The client's error for an upstream stream event that is not what the upstream's API sends
    (not JSON, cut short, not an object)."""
    return upstream_error(
        f"The upstream provider {provider!r} sent a malformed stream event.", code="upstream_malformed_event"
    )


def ended_early(provider: str) -> GatewayError:
    """The client's error for an upstream stream that ended without its final event."""
    return upstream_error(f"The upstream provider {provider!r} ended the stream early.")


def event_object(data: str | bytes, provider: str) -> dict[str, Any]:
    """The JSON object of one event's ``data``; :func:`malformed_event` when it is not one."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise malformed_event(provider) from None
    if not isinstance(payload, dict):
        raise malformed_event(provider)
    return payload


def stream_error_from(error: Any, provider: str, redact: Redactor) -> GatewayError:
    """The client's error (502) for an error object an upstream sent mid-stream, rebuilt from its
    message, type, code and param only, with the deployment's secrets scrubbed."""
    error = error if isinstance(error, Mapping) else {"message": error}
    message = str(error.get("message") or f"The upstream provider {provider!r} failed mid-stream.")
    code = error.get("code")
    param = error.get("param")
    rebuilt = GatewayError(
        502,
        message,
        type=str(error.get("type") or "server_error"),
        code=str(code) if code is not None else "upstream_error",
        param=str(param) if param is not None else None,
    )
    return redact.error(rebuilt)


_NO_SECRETS = Redactor()


class SSEFramer:
    """Splits ``text/event-stream`` bytes into whole raw events (without their blank line)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return []
        self._buffer = buffer[end + 2 :]
        return [event for event in buffer[:end].split(b"\n\n") if event]

    @property
    def pending(self) -> bool:
        """Whether the start of an event is waiting for its end."""
        return bool(self._buffer)

    def rest(self) -> bytes:
        """What is left once the stream is over: an event the upstream did not finish, or b""."""
        rest, self._buffer = self._buffer.strip(b"\n"), b""
        return rest


def checked_events(
    events: list[bytes], tap: Callable[[bytes], bytes | None]
) -> tuple[bytes, GatewayError | None]:
    """The events ``tap`` keeps (it returns the event to forward, or None), framed, up to the first
    one it refuses with the client's error; and that error."""
    out: list[bytes] = []
    for event in events:
        try:
            kept = tap(event)
        except GatewayError as error:
            return b"".join(out), error
        if kept is not None:
            out.append(kept + b"\n\n")
    return b"".join(out), None


class CheckedSSEStream(ChatStream):
    """An upstream's SSE stream forwarded event by event, each checked by :meth:`_tap` on the way.

    Subclasses set :attr:`response` and :attr:`provider`, read each event in :meth:`_tap` (which sets
    :attr:`_complete` at the stream's last event) and frame the client's error in
    :meth:`_error_frame`. A refused event, a stream that ends before its last event or mid-event, a
    reset or a timeout ends the client's stream with that error, after the events before it.
    """

    response: aiohttp.ClientResponse
    provider: str
    _complete: bool = False

    def _tap(self, event: bytes) -> bytes | None:
        """Check one raw event (without its blank line): the event to forward, None to drop it; raises
        the client's error for an event it refuses."""
        raise NotImplementedError

    def _error_frame(self, error: GatewayError) -> bytes:
        """The event that ends the client's stream with ``error``."""
        raise NotImplementedError

    async def __aiter__(self) -> AsyncIterator[bytes]:
        framer = SSEFramer()
        try:
            try:
                async for chunk in self.response.content.iter_any():
                    out, failed = checked_events(framer.feed(chunk), self._tap)
                    if out:  # the events before a failing one are the client's
                        yield out
                    if failed is not None:
                        raise failed
                rest = framer.rest()
                if rest and not self._complete:
                    kept = self._tap(rest)
                    if kept is not None:
                        yield kept + b"\n\n"
                if not self._complete:
                    log.warning("upstream %s ended the stream early", self.provider)
                    raise ended_early(self.provider)
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.warning("stream from %s failed: %s", self.provider, type(exc).__name__)
                raise transport_error(exc, self.provider) from None
        except GatewayError as error:
            if error.code == "upstream_malformed_event":
                log.warning("upstream %s sent a malformed stream event", self.provider)
            self.error = error
            yield self._error_frame(error)
        finally:
            self.close()

    def close(self) -> None:
        # aiohttp pools the connection only when the body was read to the end, and closes it otherwise.
        self.response.release()


class PassthroughStream(CheckedSSEStream):
    """Forwards an OpenAI-compatible upstream stream event by event.

    The bytes of each event are passed on untouched once its ``data`` parsed as a JSON object (about a
    microsecond for a usual chunk); the tap reads the usage chunk and drops it when the gateway asked
    for it on the client's behalf. An upstream error event is rebuilt from its message, type, code
    and param (secrets scrubbed). An event that is not JSON, an upstream that ends without
    ``[DONE]`` or mid-event, resets or times out ends the client's stream with an OpenAI error event
    instead of a silent truncation or a stream the client's SDK cannot parse.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        provider: str,
        forward_usage_chunk: bool,
        drop_empty_choices: bool = False,
        headers: Mapping[str, str] | None = None,
        redact: Redactor = _NO_SECRETS,
    ) -> None:
        self.response = response
        self.drop_empty_choices = drop_empty_choices
        self.provider = provider
        self.forward_usage_chunk = forward_usage_chunk
        self.headers = dict(headers or {})
        self.redact = redact
        self.usage: Usage | None = None
        self._complete = False

    def _tap(self, event: bytes) -> bytes | None:
        """Check one event and read its usage; return the event to forward, or None.

        Raises the client's error for a malformed event or an upstream error event.
        """
        data = event_data(event)
        if not data:  # a comment (keep-alive) or a field without data
            return event
        if data == b"[DONE]":
            self._complete = True
            return event
        payload = event_object(data, self.provider)
        if "error" in payload:
            raise stream_error_from(payload["error"], self.provider, self.redact)
        usage = payload.get("usage")
        if usage:
            self.usage = Usage.from_openai(usage)
            if not self.forward_usage_chunk and not payload.get("choices"):
                return None
        elif self.drop_empty_choices and payload.get("choices") == []:
            return None
        return event

    def _error_frame(self, error: GatewayError) -> bytes:
        return error_event(error)


class SSEParser:
    """Incremental parser of ``text/event-stream`` bytes into ``(event, data)`` pairs.

    ``event`` is the ``event:`` field or None; ``data`` joins the ``data:`` lines with newlines.
    Comments, ``id:`` and ``retry:`` are skipped.
    """

    __slots__ = ("_framer",)

    def __init__(self) -> None:
        self._framer = SSEFramer()

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        return [parsed for block in self._framer.feed(chunk) if (parsed := _parse_block(block))]

    def flush(self) -> list[tuple[str | None, str]]:
        """The last event when the stream ended without a blank line."""
        block = self._framer.rest()
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
    when it asked for it (``stream_options.include_usage``). A :class:`GatewayError` (its secrets
    scrubbed), a transport failure or an event the decoder could not read ends the stream with an
    error event; ``on_close`` releases the upstream connection.
    """

    def __init__(
        self,
        source: AsyncIterator[dict[str, Any]],
        *,
        provider: str,
        include_usage: bool,
        on_close: Callable[[], None] | None = None,
        headers: Mapping[str, str] | None = None,
        redact: Redactor = _NO_SECRETS,
    ) -> None:
        self._source = source
        self.redact = redact
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
            self.error = self.redact.error(exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.error = transport_error(exc, self.provider)
            log.warning("stream from %s failed: %s", self.provider, type(exc).__name__)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            # An event of a shape the decoder does not know (valid JSON, wrong types).
            log.warning("stream from %s: an event could not be decoded", self.provider, exc_info=True)
            self.error = malformed_event(self.provider)
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
