"""A fake Azure OpenAI resource on 127.0.0.1 that answers and validates like ``*.openai.azure.com``.

It serves ``POST /openai/deployments/{deployment}/chat/completions`` and ``.../embeddings`` from an
aiohttp server in a background thread. As Azure does, it wants the key in the ``api-key`` header
(401 with Azure's "Access denied" body otherwise), a supported ``api-version`` query parameter (none:
404 "Resource not found"; an unknown one: 400 "API version not supported") and a deployment that
exists (404 ``DeploymentNotFound``). The deployment, not the body's ``model``, picks the model.

Answers carry Azure's content-filter annotations: ``prompt_filter_results`` on the completion and
``content_filter_results`` on each choice. A stream starts with Azure's chunk whose ``choices`` is
empty and which holds only the prompt filter results, then carries the usual chunks (each with its
``content_filter_results``), a usage chunk when ``stream_options.include_usage`` is set, and
``[DONE]``. A prompt containing :data:`FILTERED_WORD` is refused with Azure's content-filter 400.
Faults are injected with :meth:`FakeAzureOpenAI.behave` (e.g. 429 with ``retry-after``).

    with FakeAzureOpenAI() as azure:
        ...
        assert azure.requests[-1].query["api-version"] == "2024-10-21"
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import CHAT_PARAMETERS, EMBEDDING_PARAMETERS, embedding_for, split_reply
from tests.fakes.server import BackgroundServer, RecordedRequestWithQuery, broken_event

DEFAULT_API_KEY = "0123456789abcdef0123456789abcdef"
#: Deployment name -> the model it serves.
DEPLOYMENTS = {"chat-4o": "gpt-4o-2024-08-06", "embed-small": "text-embedding-3-small"}
EMBEDDING_DIMENSIONS = {"text-embedding-3-small": 1536}
API_VERSIONS = frozenset({"2024-02-01", "2024-06-01", "2024-10-21", "2025-01-01-preview"})
#: A prompt containing this word trips the content filter.
FILTERED_WORD = "forbidden-topic"

ACCESS_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)
DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the deployment within the last "
    "5 minutes, please wait a moment and try again."
)
CONTENT_FILTERED = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
    "Please modify your prompt and retry. To learn more about our content filtering policies please read "
    "our documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
)
_SAFE = {"filtered": False, "severity": "safe"}
CHOICE_FILTERS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
PROMPT_FILTERS = [
    {
        "prompt_index": 0,
        "content_filter_results": {**CHOICE_FILTERS, "jailbreak": {"filtered": False, "detected": False}},
    }
]


#: One request the fake received, with its query parameters.
AzureRequest = RecordedRequestWithQuery


@dataclass
class Behaviour:
    """How the fake answers until the next :meth:`FakeAzureOpenAI.behave` or :meth:`FakeAzureOpenAI.reset`."""

    #: Answer every valid request with this status and Azure's error body.
    status: int | None = None
    code: str | None = None
    message: str = "The server had an error while processing your request. Sorry about that!"
    headers: dict[str, str] = field(default_factory=dict)
    #: Chat answer text; by default ``"Echo: "`` + the last user message.
    reply: str | None = None
    #: Content chunks of a stream.
    chunks: int = 3
    #: Stop the stream after this many events by resetting the connection.
    die_after: int | None = None
    #: Cut the ``data:`` of the stream event at this index in the middle (not valid JSON), then go on
    #: with the rest and ``[DONE]``.
    broken_event: int | None = None


def _error(status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": error}),
        content_type="application/json",
        headers=headers or None,
    )


class _Died(Exception):
    pass


class FakeAzureOpenAI(BackgroundServer[AzureRequest]):
    """The fake Azure OpenAI resource; see the module docstring.

    ``url`` is the resource endpoint, as ``base_url`` of an ``azure_openai`` deployment takes it.
    """

    name = "fake-azure-openai"
    record_type = AzureRequest

    def __init__(self, api_key: str = DEFAULT_API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.behaviour = Behaviour()

    def behave(self, **changes: Any) -> Behaviour:
        self.behaviour = Behaviour(**changes)
        return self.behaviour

    def reset(self) -> None:
        with self._lock:
            self.behaviour = Behaviour()
            self.requests.clear()

    # --- request handling ----------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/openai/deployments/{deployment}/{operation:.+}", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        if request.headers.get("api-key") != self.api_key:
            return _error(401, {"code": "401", "message": ACCESS_DENIED})
        operation = request.match_info["operation"]
        version = request.query.get("api-version")
        if operation not in ("chat/completions", "embeddings") or not version:
            return _error(404, {"code": "404", "message": "Resource not found"})
        if version not in API_VERSIONS:
            return _error(400, {"code": "BadRequest", "message": "API version not supported"})
        model = DEPLOYMENTS.get(request.match_info["deployment"])
        if model is None or (operation == "embeddings") != (model in EMBEDDING_DIMENSIONS):
            return _error(404, {"code": "DeploymentNotFound", "message": DEPLOYMENT_NOT_FOUND})
        behaviour = self.behaviour
        if behaviour.status is not None:
            error = {"code": behaviour.code or str(behaviour.status), "message": behaviour.message}
            return _error(behaviour.status, error, behaviour.headers)
        try:
            data = orjson.loads(recorded.body)
        except orjson.JSONDecodeError:
            return _error(400, {"code": "BadRequest", "message": "Invalid JSON in request body."})
        if not isinstance(data, dict):
            return _error(400, {"code": "BadRequest", "message": "The request body must be an object."})
        known = CHAT_PARAMETERS if operation == "chat/completions" else EMBEDDING_PARAMETERS
        unknown = sorted(set(data) - known)
        if unknown:
            return _error(
                400,
                {
                    "message": f"Unrecognized request argument supplied: {unknown[0]}",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                },
            )
        if operation == "embeddings":
            return self._embeddings(data, model)
        try:
            return await self._chat(request, data, model)
        except _Died:
            raise asyncio.CancelledError from None

    def _next_id(self) -> str:
        return f"chatcmpl-azfake{self._next_number():06d}"

    def _headers(self) -> dict[str, str]:
        return {"apim-request-id": "00000000-0000-4000-8000-000000000000", "x-ms-region": "Sweden Central"}

    async def _chat(self, request: web.Request, data: dict[str, Any], model: str) -> web.StreamResponse:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(
                400,
                {
                    "message": "Invalid 'messages': empty array.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "empty_array",
                },
            )
        texts = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        last = texts[-1] if texts and isinstance(texts[-1], str) else ""
        if any(isinstance(text, str) and FILTERED_WORD in text for text in texts):
            return self._content_filtered()
        reply = self.behaviour.reply if self.behaviour.reply is not None else f"Echo: {last}"
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
        completion_tokens = len(reply.split())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        completion_id = self._next_id()
        created = int(time.time())
        if data.get("stream") is not True:
            answer = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                        "content_filter_results": CHOICE_FILTERS,
                    }
                ],
                "usage": usage,
                "prompt_filter_results": PROMPT_FILTERS,
                "system_fingerprint": "fp_azfake01",
            }
            return web.Response(
                body=orjson.dumps(answer), content_type="application/json", headers=self._headers()
            )
        options = data.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_azfake01",
        }
        tail: dict[str, Any] = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish_reason,
                "content_filter_results": {} if finish_reason else CHOICE_FILTERS,
            }
            return b"data: " + orjson.dumps({**head, "choices": [choice], **tail}) + b"\n\n"

        preamble = {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": PROMPT_FILTERS,
            **tail,
        }
        events = [b"data: " + orjson.dumps(preamble) + b"\n\n"]
        events.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        events += [chunk({"content": piece}) for piece in split_reply(reply, self.behaviour.chunks)]
        events.append(chunk({}, "stop"))
        if include_usage:
            events.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        if self.behaviour.broken_event is not None:
            events[self.behaviour.broken_event] = broken_event(events[self.behaviour.broken_event])
        response = web.StreamResponse(headers=self._headers())
        response.content_type = "text/event-stream"
        response.charset = "utf-8"
        await response.prepare(request)
        for index, event in enumerate(events):
            if self.behaviour.die_after is not None and index >= self.behaviour.die_after:
                if request.transport is not None:
                    request.transport.abort()
                raise _Died
            await response.write(event)
        await response.write_eof()
        return response

    def _content_filtered(self) -> web.Response:
        verdicts = {**CHOICE_FILTERS, "violence": {"filtered": True, "severity": "medium"}}
        return _error(
            400,
            {
                "message": CONTENT_FILTERED,
                "type": None,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
                "innererror": {
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {
                        **verdicts,
                        "jailbreak": {"filtered": False, "detected": False},
                    },
                },
            },
        )

    def _embeddings(self, data: dict[str, Any], model: str) -> web.Response:
        raw = data.get("input")
        inputs = raw if isinstance(raw, list) else [raw]
        if not inputs or not all(isinstance(item, str) and item for item in inputs):
            return _error(
                400,
                {
                    "message": "'input' must be a non-empty string or array of strings.",
                    "type": "invalid_request_error",
                    "param": "input",
                    "code": None,
                },
            )
        dimensions = int(data.get("dimensions") or EMBEDDING_DIMENSIONS[model])
        as_base64 = data.get("encoding_format") == "base64"
        items, tokens = [], 0
        for index, text in enumerate(inputs):
            tokens += len(text.split())
            vector = embedding_for(text, dimensions)
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
            )
            items.append({"object": "embedding", "index": index, "embedding": embedding})
        body = {
            "object": "list",
            "data": items,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=self._headers())


__all__ = [
    "API_VERSIONS",
    "DEFAULT_API_KEY",
    "DEPLOYMENTS",
    "FILTERED_WORD",
    "AzureRequest",
    "Behaviour",
    "FakeAzureOpenAI",
]
