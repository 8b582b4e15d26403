"""A deterministic local provider, so the gateway answers with no provider keys.

It echoes the last user message (or a fixed ``reply``), streams it in ``chunks`` pieces with
``latency_ms`` between them, honours ``max_tokens`` (finish reason ``length``) and
``stream_options.include_usage``, and returns deterministic unit-length embeddings. Token counts are
words, which is an approximation of real tokenizers that is stable across runs. Credential pools
and their limits apply as for real providers; a credential's ``options`` (e.g. its own ``reply``)
apply to the calls it serves.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway_core import (
    ChatStream,
    CompletedResponse,
    Provider,
    ProviderCall,
    Usage,
    bad_request,
    hookimpl,
)
from gateway_core.embeddings import embeddings_answer
from gateway_core.sse import DONE, sse_event

FINGERPRINT = "fp_lockgate_mock"


class MockOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reply: str | None = Field(None, description="fixed answer; by default the last user message is echoed")
    chunks: int = Field(8, ge=1, le=10_000, description="content chunks per streamed answer")
    latency_ms: float = Field(0.0, ge=0, description="delay before the answer and between streamed chunks")
    embedding_dimensions: int = Field(16, ge=1, le=8192)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _count_tokens(text: str) -> int:
    return len(text.split())


def _split(text: str, pieces: int) -> list[str]:
    if not text:
        return []
    size = max(1, math.ceil(len(text) / pieces))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class MockStream(ChatStream):
    def __init__(self, events: list[bytes], delay: float, usage: Usage) -> None:
        self._events = events
        self._delay = delay
        self._usage = usage

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index, event in enumerate(self._events):
            if self._delay and index:
                await asyncio.sleep(self._delay)
            yield event
        self.usage = self._usage  # known once the whole answer went out, like a real stream's


class MockProvider(Provider):
    name: ClassVar[str] = "mock"
    Options: ClassVar[type[BaseModel]] = MockOptions
    supports_embeddings: ClassVar[bool] = True

    def _answer(self, options: MockOptions, body: dict[str, Any]) -> tuple[str, str, int, int]:
        messages = body.get("messages") or []
        prompt_tokens = sum(
            _count_tokens(_text_of(m.get("content"))) for m in messages if isinstance(m, dict)
        )
        text = options.reply
        if text is None:
            user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            text = _text_of(user[-1].get("content")) if user else ""
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        words = text.split(" ")
        if isinstance(limit, int) and limit > 0 and _count_tokens(text) > limit:
            kept: list[str] = []
            for word in words:
                if _count_tokens(" ".join([*kept, word])) > limit:
                    break
                kept.append(word)
            text, finish = " ".join(kept), "length"
        return text, finish, prompt_tokens, _count_tokens(text)

    async def chat(self, call: ProviderCall) -> CompletedResponse | ChatStream:
        credential = await self.credential(call.ctx)  # counts the call on the deployment's limits
        options = credential.options
        assert isinstance(options, MockOptions)
        text, finish, prompt_tokens, completion_tokens = self._answer(options, call.body)
        delay = options.latency_ms / 1000
        completion_id = f"chatcmpl-{call.ctx.request_id.removeprefix('req_')}"
        created = int(time.time())
        usage = _usage(prompt_tokens, completion_tokens)
        if not call.ctx.stream:
            if delay:
                await asyncio.sleep(delay)
            answer = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": call.upstream_model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": FINGERPRINT,
            }
            return CompletedResponse(orjson.dumps(answer), Usage.from_openai(usage))
        stream_options = call.body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": call.upstream_model,
        }
        tail: dict[str, Any] = {"service_tier": "default", "system_fingerprint": FINGERPRINT}
        if include_usage:
            tail["usage"] = None

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return sse_event(orjson.dumps({**head, **tail, "choices": [choice]}))

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"content": piece}) for piece in _split(text, options.chunks)]
        events.append(chunk({}, finish))
        if include_usage:
            events.append(sse_event(orjson.dumps({**head, **tail, "choices": [], "usage": usage})))
        events.append(DONE)
        return MockStream(events, delay, Usage.from_openai(usage) or Usage())

    async def health_check(self) -> None:
        """The mock is always able to answer: nothing to send."""

    async def embeddings(self, call: ProviderCall) -> CompletedResponse:
        credential = await self.credential(call.ctx)
        options = credential.options
        assert isinstance(options, MockOptions)
        raw_input = call.body.get("input")
        inputs: list[Any] = (
            raw_input
            if isinstance(raw_input, list) and raw_input and not isinstance(raw_input[0], int)
            else [raw_input]
        )
        dimensions = call.body.get("dimensions") or options.embedding_dimensions
        if not isinstance(dimensions, int) or dimensions < 1:
            raise bad_request("`dimensions` must be a positive integer.", param="dimensions")
        vectors = []
        tokens = 0
        for item in inputs:
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += len(item) if isinstance(item, list) else _count_tokens(item)
            vectors.append(_embed(text, dimensions))
        body = embeddings_answer(
            vectors,
            model=call.upstream_model,
            encoding_format=call.body.get("encoding_format"),
            prompt_tokens=tokens,
        )
        return CompletedResponse(orjson.dumps(body), Usage(prompt_tokens=tokens, total_tokens=tokens))


def _embed(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector derived from the text's SHA-256 stream."""
    raw = b""
    counter = 0
    while len(raw) < dimensions * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [(int.from_bytes(raw[i * 4 : i * 4 + 4], "little") / 2**32) * 2 - 1 for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in values]


@hookimpl
def lockgate_register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("mock", MockProvider)
