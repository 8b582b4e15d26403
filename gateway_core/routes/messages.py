"""Anthropic's Messages API as a client dialect: ``/v1/messages`` and ``/v1/messages/count_tokens``.

Anthropic-compatible clients (the ``anthropic`` SDK, Claude-style coding tools) reach any configured
provider: the request is translated to the canonical OpenAI form, and the answer, streams included,
back to Anthropic's exact shapes and event sequence. Errors are Anthropic-shaped.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway_core.attempts import StreamMode
from gateway_core.dialects import anthropic as dialect
from gateway_core.errors import GatewayError
from gateway_core.pipeline import Decoded, WireFormat
from gateway_core.providers import ChatStream, CompletedResponse
from gateway_core.types import Endpoint, RequestContext


class AnthropicWire(WireFormat):
    name = "anthropic"

    def decode(self, endpoint: Endpoint, body: dict[str, Any]) -> Decoded:
        if endpoint == "count_tokens":
            # count_tokens takes a Messages request without max_tokens or stream.
            body = {**body, "max_tokens": 1}
            body.pop("stream", None)
        skeleton = dialect.messages_essentials(body)
        model, stream = str(skeleton["model"]), bool(skeleton.get("stream"))
        try:
            return Decoded(dialect.decode_messages_request(body), model, stream, keep_raw=False)
        except GatewayError as error:
            # Not translatable (e.g. extended thinking): an Anthropic-speaking deployment may still
            # take it as it is; the pipeline raises this error for any other.
            return Decoded(skeleton, model, stream, keep_raw=False, untranslatable=error)

    def error_body(self, error: GatewayError) -> bytes:
        return dialect.encode_error(error)

    def encode(self, ctx: RequestContext, result: CompletedResponse) -> bytes:
        if ctx.endpoint == "count_tokens" or result.dialect == "anthropic":
            return result.body
        return orjson.dumps(dialect.encode_messages_response(orjson.loads(result.body), model=ctx.model))

    def stream_mode(self, stream: ChatStream) -> StreamMode:
        return "bytes" if stream.dialect == "anthropic" else "chunks"

    async def write_stream(
        self, ctx: RequestContext, stream: ChatStream, write: Callable[[bytes], Awaitable[None]]
    ) -> None:
        if stream.dialect == "anthropic":
            async for event in stream:
                await write(event)
            return
        encoder = dialect.MessagesStreamEncoder(model=ctx.model, message_id=f"msg_{uuid.uuid4().hex[:24]}")
        async for chunk in stream.chunks():
            for frame in encoder.feed(chunk):
                await write(frame)
        if stream.error is not None:
            await write(encoder.error(stream.error))
        else:
            for frame in encoder.finish():
                await write(frame)


ANTHROPIC = AnthropicWire()
