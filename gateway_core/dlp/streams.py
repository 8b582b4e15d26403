"""DLP on a streamed answer, chunk by chunk, values split across chunks included.

Each text of the answer (a choice's content, a tool call's arguments, an Anthropic content block) is a
*channel*. A piece arriving on a channel is appended to what the channel holds; the filters' hold-back
(:meth:`~gateway_core.dlp.filter.DlpFilter.holdback`) and any unfinished pseudonym placeholder say
where the end that could still become a match starts; everything before it is filtered, its pseudonyms
restored, and released in the same event at once. What is held goes out with the next piece, and at the
latest with the event that ends the channel (a finish reason, ``content_block_stop``, the end of the
stream), so nothing is lost and nothing is late by more than the hold-back. At most
``dlp.stream_holdback_chars`` characters are ever held.

When every action of the policy is ``log`` and no pseudonym is to be restored, the events pass exactly
as the upstream sent them: the channels are only read, for the counts.

A value whose action is ``block`` ends the stream with an error event in the client's dialect before
the value is sent (``stream.error`` is the 400 ``dlp_blocked`` error).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from gateway_core.dialects.anthropic import encode_error as anthropic_error_body
from gateway_core.dialects.anthropic import frame as anthropic_frame
from gateway_core.dlp.actions import Blocked
from gateway_core.errors import GatewayError
from gateway_core.providers import ChatStream, WrappedStream
from gateway_core.sse import SSEFramer, error_event, event_data

if TYPE_CHECKING:
    from gateway_core.dlp.engine import DlpSession

_OUTPUT_KEYS = ("content", "refusal", "reasoning_content", "reasoning")
#: Anthropic delta types and the key of their text; the channel kind of the block.
_ANTHROPIC_DELTAS = {"text_delta": "text", "input_json_delta": "partial_json", "thinking_delta": "thinking"}


class _Stop(Exception):
    """The answer holds a blocked value: the stream ends here."""

    def __init__(self, error: GatewayError) -> None:
        self.error = error


class Channel:
    """One text of the answer as it streams: what is held back, and whether it is JSON."""

    __slots__ = ("held", "json")

    def __init__(self, json: bool = False) -> None:
        self.held = ""
        self.json = json


class DlpStream(WrappedStream):
    """``inner`` with its texts filtered and its pseudonyms restored; see the module's description."""

    def __init__(self, session: DlpSession, inner: ChatStream) -> None:
        super().__init__(inner)
        self.session = session
        policy = session.policy
        #: Whether events may be rewritten (False: log only, bytes pass unchanged).
        self.rewrite = bool(session.pseudonyms) or (policy.response and policy.rewrites)
        self.max_hold = session.dlp.max_hold
        self._channels: dict[tuple[Any, ...], Channel] = {}
        self._head: dict[str, Any] = {}
        #: The delta type of each Anthropic content block, by index.
        self._kinds: dict[Any, str] = {}

    # --- the text of one channel ------------------------------------------------------------------

    def _channel(self, key: tuple[Any, ...], json: bool = False) -> Channel:
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = Channel(json)
        return channel

    async def _release(self, channel: Channel, piece: str, final: bool = False) -> str:
        """Add ``piece`` to the channel; return what can be sent now (filtered and restored)."""
        session = self.session
        policy = session.policy
        text = channel.held + piece
        if not text:
            return ""
        scanning = policy.response
        pseudonyms = session.pseudonyms
        cut = len(text)
        if not final:
            if scanning:
                for dlp_filter, types in policy.scans:
                    cut = min(cut, dlp_filter.holdback(text, types))
            if pseudonyms:
                cut = min(cut, pseudonyms.holdback(text))
            cut = max(cut, len(text) - self.max_hold, 0)
        try:
            findings = await session.find(text, "response") if scanning else []
        except GatewayError as error:  # a filter failed (on_error: block): the stream ends here
            raise _Stop(error) from None
        if findings and cut < len(text):
            for finding in reversed(findings):  # a value running past the cut waits whole
                if finding.start < cut < finding.end:
                    cut = finding.start
            findings = [f for f in findings if f.end <= cut]
        released, channel.held = text[:cut], text[cut:]
        out = released
        if findings:
            try:
                out = session.rewriter.apply(released, findings, "response")
            except Blocked as exc:
                from gateway_core.dlp.engine import dlp_blocked

                raise _Stop(dlp_blocked(exc.types, "response")) from None
        if pseudonyms:
            out = pseudonyms.restore(out, json=channel.json)
        return out

    async def _flush(self, channel: Channel) -> str:
        return await self._release(channel, "", final=True)

    # --- canonical chunks ---------------------------------------------------------------------------

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        items = self.inner.chunks()
        try:
            async for chunk in items:
                try:
                    await self._chunk(chunk)
                except _Stop as stop:
                    self.error = stop.error
                    return
                yield chunk
            try:
                rest = await self._rest_chunk()
            except _Stop as stop:
                self.error = stop.error
                return
            if rest is not None:
                yield rest
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _chunk(self, chunk: dict[str, Any]) -> bool:
        """Filter one OpenAI-shaped chunk in place; True when it changed."""
        for key in ("id", "created", "model"):
            if key in chunk:
                self._head[key] = chunk[key]
        changed = False
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            for key in _OUTPUT_KEYS:
                value = delta.get(key)
                if isinstance(value, str) and value:
                    out = await self._release(self._channel((index, key)), value)
                    if out != value and self.rewrite:
                        delta[key] = out
                        changed = True
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                function = call.get("function") if isinstance(call, dict) else None
                arguments = function.get("arguments") if isinstance(function, dict) else None
                if isinstance(arguments, str) and arguments:
                    channel = self._channel((index, "tool", call.get("index", 0)), json=True)
                    out = await self._release(channel, arguments)
                    if out != arguments and self.rewrite:
                        function["arguments"] = out  # type: ignore[index]
                        changed = True
            if choice.get("finish_reason") is not None:
                changed = await self._flush_choice(index, delta) or changed
        return changed

    async def _flush_choice(self, index: Any, delta: dict[str, Any]) -> bool:
        """Put what the choice's channels hold into ``delta`` (of its last chunk)."""
        changed = False
        for key, channel in list(self._channels.items()):
            if key[0] != index or not channel.held:
                continue
            rest = await self._flush(channel)
            if not rest or not self.rewrite:
                continue
            changed = True
            if key[1] == "tool":
                calls = delta.setdefault("tool_calls", [])
                calls.append({"index": key[2], "function": {"arguments": rest}})
            else:
                delta[key[1]] = (delta.get(key[1]) or "") + rest
        return changed

    async def _rest_chunk(self) -> dict[str, Any] | None:
        """A chunk with what is still held when the stream ends without a finish (None if nothing)."""
        deltas: dict[Any, dict[str, Any]] = {}
        for key in [key for key, channel in self._channels.items() if channel.held]:
            delta = deltas.setdefault(key[0], {})
            await self._flush_choice(key[0], delta)
        deltas = {index: delta for index, delta in deltas.items() if delta}
        if not deltas:
            return None
        return {
            "id": self._head.get("id", "chatcmpl-dlp"),
            "object": "chat.completion.chunk",
            "created": self._head.get("created", int(time.time())),
            "model": self._head.get("model", ""),
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                for index, delta in deltas.items()
            ],
        }

    # --- bytes: SSE events in the stream's own dialect ----------------------------------------------

    async def __aiter__(self) -> AsyncIterator[bytes]:
        anthropic = self.dialect == "anthropic"
        event_of = self._anthropic_event if anthropic else self._openai_event
        items = self.inner.__aiter__()
        framer = SSEFramer()
        out: list[bytes] = []  # the events of one read, as they go out
        first = True  # the stream's first event goes out alone: its time to first byte is the client's
        try:
            try:
                async for data in items:
                    for event in framer.feed(data):
                        out.append(await event_of(event))
                        if first and out[-1]:
                            first = False
                            yield out.pop()
                    if out:
                        yield b"".join(out)
                        out = []
                rest = framer.rest()
                tail = await event_of(rest) if rest else b""
                if anthropic:
                    tail += await self._anthropic_flush(list(self._channels))
                else:
                    tail += await self._openai_rest()
                if tail:
                    yield tail
            except _Stop as stop:
                self.error = stop.error
                sent = b"".join(out)  # the events of the read before the one holding the value
                if anthropic:
                    yield sent + b"event: error\ndata: " + anthropic_error_body(stop.error) + b"\n\n"
                else:
                    yield sent + error_event(stop.error)
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _openai_event(self, event: bytes) -> bytes:
        whole = event + b"\n\n"
        data = event_data(event)
        if not data:
            return whole
        if data == b"[DONE]":
            return await self._openai_rest() + whole
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return whole
        if not isinstance(chunk, dict):
            return whole
        if "error" in chunk:
            return await self._openai_rest() + whole
        changed = await self._chunk(chunk)
        if changed:
            return b"data: " + orjson.dumps(chunk) + b"\n\n"
        return whole

    async def _openai_rest(self) -> bytes:
        rest = await self._rest_chunk()
        if rest is None:
            return b""
        return b"data: " + orjson.dumps(rest) + b"\n\n"

    async def _anthropic_event(self, event: bytes) -> bytes:
        whole = event + b"\n\n"
        data = event_data(event)
        if not data:
            return whole
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return whole
        if not isinstance(payload, dict):
            return whole
        kind = payload.get("type")
        index = payload.get("index", 0)
        if kind == "content_block_start":
            block = payload.get("content_block")
            if isinstance(block, dict):
                block_type = block.get("type")
                delta_type = (
                    "input_json_delta"
                    if block_type in ("tool_use", "server_tool_use")
                    else ("thinking_delta" if block_type == "thinking" else "text_delta")
                )
                self._kinds[index] = delta_type
                key = "text" if block_type == "text" else "thinking" if block_type == "thinking" else None
                if key is not None and isinstance(block.get(key), str) and block[key]:
                    value = block[key]
                    out = await self._release(self._channel((index,), False), value)
                    if out != value and self.rewrite:
                        block[key] = out
                        return anthropic_frame("content_block_start", payload)
            return whole
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                return whole
            key = _ANTHROPIC_DELTAS.get(str(delta.get("type")))
            value = delta.get(key) if key is not None else None
            if key is None or not isinstance(value, str) or not value:
                return whole
            channel = self._channel((index,), json=key == "partial_json")
            out = await self._release(channel, value)
            if out == value or not self.rewrite:
                return whole
            if not out:
                return b""
            delta[key] = out
            return anthropic_frame("content_block_delta", payload)
        if kind == "content_block_stop":
            return await self._anthropic_flush([(index,)]) + whole
        if kind in ("message_delta", "message_stop", "error"):
            return await self._anthropic_flush(list(self._channels)) + whole
        return whole

    async def _anthropic_flush(self, keys: list[tuple[Any, ...]]) -> bytes:
        out = b""
        for key in keys:
            channel = self._channels.get(key)
            if channel is None or not channel.held:
                continue
            rest = await self._flush(channel)
            if rest and self.rewrite:
                delta_type = self._kinds.get(key[0], "text_delta")
                text_key = {"text_delta": "text", "input_json_delta": "partial_json"}.get(
                    delta_type, "thinking"
                )
                payload = {
                    "type": "content_block_delta",
                    "index": key[0],
                    "delta": {"type": delta_type, text_key: rest},
                }
                out += anthropic_frame("content_block_delta", payload)
        return out
