"""Streams ended at the output tokens the policies admitted (``ctx.output_cap``).

A budget reserves a request's worst case from its ``max_tokens``; an upstream that ignores
``max_tokens`` would stream past it. :class:`CappedStream` wraps the answer's stream when a policy set
a cap: it counts the output tokens relayed, one per event that carries output (text, a refusal, tool
call arguments, reasoning; upstreams stream a token or so per event), and at the first such event past
the cap it stops reading the upstream and ends the client's stream properly in its dialect:

* OpenAI: a chunk with ``finish_reason: "length"``, the usage chunk when the client asked for it
  (``stream_options.include_usage``), then ``[DONE]``;
* Anthropic (forwarded natively): ``content_block_stop``, ``message_delta`` with ``stop_reason:
  "max_tokens"``, then ``message_stop``;
* canonical chunks (translated for another dialect): a ``length`` finish and a usage chunk, which the
  client's encoder turns into its own ending.

Events without output (a finish, the usage chunk, ``[DONE]``) still pass after the cap, so an upstream
that honours ``max_tokens`` ends its stream itself. A stream that was cut has the usage the gateway
counted: the estimated prompt tokens and the output tokens relayed. Without a cap no wrapper is made,
so the common path costs nothing; with one, the cost is a search in each event's bytes.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway_core.dialects.anthropic import frame as anthropic_frame
from gateway_core.errors import GatewayError
from gateway_core.pricing import estimate_prompt_tokens
from gateway_core.providers import ChatStream, WrappedStream
from gateway_core.sse import SSEFramer
from gateway_core.types import RequestContext, Usage

#: An OpenAI chunk event that carries output: a non-empty text, refusal, arguments or reasoning.
_OPENAI_OUTPUT = re.compile(rb'"(?:content|refusal|arguments|reasoning_content|reasoning)"\s*:\s*"(?!")')
#: An Anthropic event that carries output.
_ANTHROPIC_OUTPUT = re.compile(rb'"type"\s*:\s*"(?:text_delta|input_json_delta|thinking_delta)"')
_ANTHROPIC_INDEX = re.compile(rb'"index"\s*:\s*(\d+)')
_OUTPUT_KEYS = ("content", "refusal", "reasoning_content", "reasoning")


def cap_stream(ctx: RequestContext, stream: ChatStream) -> ChatStream:
    """``stream`` ended at ``ctx.output_cap`` output tokens (unchanged when no cap is set)."""
    if ctx.output_cap is None:
        return stream
    return CappedStream(ctx, stream, ctx.output_cap)


class CappedStream(WrappedStream):
    """A stream relayed up to ``cap`` output tokens; see the module's description."""

    def __init__(self, ctx: RequestContext, inner: ChatStream, cap: int) -> None:
        super().__init__(inner)
        self.ctx = ctx
        self.cap = cap
        #: Output tokens relayed so far.
        self.relayed = 0
        #: Whether the stream was ended at the cap.
        self.cut = False
        self._usage: Usage | None = None

    @property
    def usage(self) -> Usage | None:
        return self._usage if self.cut else self.inner.usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self.inner.usage = value

    @property
    def error(self) -> GatewayError | None:
        return None if self.cut else self.inner.error

    @error.setter
    def error(self, value: GatewayError | None) -> None:
        self.inner.error = value

    # --- counting ---------------------------------------------------------------------------------

    def _over(self, has_output: bool) -> bool:
        """Count one event; True when it carries output past the cap (the stream ends before it)."""
        if not has_output:
            return False
        if self.relayed >= self.cap:
            self._end()
            return True
        self.relayed += 1
        return False

    def _end(self) -> None:
        self.cut = True
        prompt = estimate_prompt_tokens(self.ctx.body)
        self._usage = Usage(prompt, self.relayed, prompt + self.relayed)
        self._usage.estimated = True  # the gateway counted it, not the upstream

    # --- bytes: SSE events in the stream's own dialect ---------------------------------------------

    async def __aiter__(self) -> AsyncIterator[bytes]:
        anthropic = self.dialect == "anthropic"
        pattern = _ANTHROPIC_OUTPUT if anthropic else _OPENAI_OUTPUT
        items = self.inner.__aiter__()
        framer = SSEFramer()  # holds the start of an event whose end has not come yet (raw streams)
        try:
            async for data in items:
                if not framer.pending and data.endswith(b"\n\n") and pattern.search(data) is None:
                    yield data  # whole events without output
                    continue
                kept: list[bytes] = []
                for event in framer.feed(data):
                    if self._over(pattern.search(event) is not None):
                        if kept:
                            yield b"\n\n".join(kept) + b"\n\n"
                        yield self._anthropic_end(event) if anthropic else self._openai_end(event)
                        return
                    kept.append(event)
                if kept:
                    yield b"\n\n".join(kept) + b"\n\n"
            rest = framer.rest()
            if rest:
                yield rest
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    def _openai_end(self, event: bytes) -> bytes:
        head = _openai_head(event)
        finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
        out = b"data: " + orjson.dumps({**head, "choices": [finish]}) + b"\n\n"
        options = self.ctx.body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            out += b"data: " + orjson.dumps({**head, "choices": [], "usage": self._openai_usage()}) + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def _openai_usage(self) -> dict[str, int]:
        usage = self._usage
        assert usage is not None
        return {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }

    def _anthropic_end(self, event: bytes) -> bytes:
        found = _ANTHROPIC_INDEX.search(event)
        index = int(found.group(1)) if found else 0
        delta = {"stop_reason": "max_tokens", "stop_sequence": None}
        return (
            anthropic_frame("content_block_stop", {"type": "content_block_stop", "index": index})
            + anthropic_frame(
                "message_delta",
                {"type": "message_delta", "delta": delta, "usage": {"output_tokens": self.relayed}},
            )
            + anthropic_frame("message_stop", {"type": "message_stop"})
        )

    # --- canonical chunks --------------------------------------------------------------------------

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        items = self.inner.chunks()
        try:
            async for chunk in items:
                if self._over(_has_output(chunk)):
                    head: dict[str, Any] = {
                        k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk
                    }
                    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
                    yield {**head, "choices": [finish]}
                    yield {**head, "choices": [], "usage": self._openai_usage()}
                    return
                yield chunk
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()


def _has_output(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if any(isinstance(delta.get(key), str) and delta[key] for key in _OUTPUT_KEYS):
            return True
        for call in delta.get("tool_calls") or ():
            arguments = (call.get("function") or {}).get("arguments")
            if isinstance(arguments, str) and arguments:
                return True
    return False


def _openai_head(event: bytes) -> dict[str, Any]:
    """The id, object, created and model of the chunk ``event`` (made up when it cannot be read)."""
    data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        chunk = None
    if not isinstance(chunk, dict):
        chunk = {}
    return {
        "id": chunk.get("id") or "chatcmpl-capped",
        "object": "chat.completion.chunk",
        "created": chunk.get("created") or int(time.time()),
        "model": chunk.get("model") or "",
    }
