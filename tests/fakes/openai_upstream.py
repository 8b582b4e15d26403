"""A fake OpenAI API on 127.0.0.1 that answers and validates like api.openai.com.

It serves ``POST /v1/chat/completions`` (JSON or SSE stream), ``POST /v1/embeddings`` (float or
base64) and ``GET /v1/models[/{id}]`` from an aiohttp server running in a background thread with its
own event loop, so synchronous and asynchronous tests can both use it. Every request is recorded
(headers and raw body) so tests can check what the gateway forwarded, and :class:`Behaviour` injects
faults: error statuses, delays, streams that die, malformed JSON. Streams and requests that end
because the caller went away are recorded in :attr:`FakeOpenAI.aborted`.

    with FakeOpenAI() as fake:
        fake.behave(status=429, headers={"retry-after": "7"})
        ...
        assert fake.requests[-1].json["model"] == "gpt-4o-mini"
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from aiohttp import web

from tests.fakes.server import BackgroundServer, RecordedRequest, broken_event, echoed_headers

DEFAULT_API_KEY = "sk-fake-upstream-3f9a1c0e5b7d2468ace0"

CHAT_MODELS = ("gpt-4o-mini", "gpt-4o")
EMBEDDING_MODELS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}
CREATED = 1_721_172_741

#: Request parameters the real chat completions endpoint accepts; anything else is a 400.
CHAT_PARAMETERS = frozenset(
    {
        "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
        "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty", "logit_bias",
        "logprobs", "top_logprobs", "user", "metadata", "store", "seed", "tools", "tool_choice",
        "parallel_tool_calls", "response_format", "service_tier", "modalities", "audio", "prediction",
        "reasoning_effort", "web_search_options", "functions", "function_call", "verbosity",
        "prompt_cache_key", "safety_identifier",
    }
)  # fmt: skip
EMBEDDING_PARAMETERS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass
class Behaviour:
    """How the fake answers until the next :meth:`FakeOpenAI.behave` or :meth:`FakeOpenAI.reset`."""

    #: Answer every API request with this status and an OpenAI error body (after auth).
    status: int | None = None
    message: str = "The server had an error while processing your request. Sorry about that!"
    type: str = "server_error"
    code: str | None = None
    #: Extra response headers (e.g. ``retry-after``) on every answer.
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before sending the response headers.
    delay: float = 0.0
    #: Chat answer text; by default ``"Echo: "`` + the last user message.
    reply: str | None = None
    #: Answer with these function calls, ``(name, JSON arguments)``, instead of text (finish reason
    #: ``tool_calls``); streamed, each call's arguments are split into ``chunks`` pieces.
    tool_calls: list[tuple[str, str]] | None = None
    #: Number of content chunks a stream carries (the reply is split into this many pieces).
    chunks: int = 4
    #: Seconds between streamed events.
    chunk_interval: float = 0.0
    #: Stop the stream after this many events, without ``[DONE]``.
    die_after: int | None = None
    #: With ``die_after``: reset the TCP connection (True) or end the HTTP body cleanly (False).
    abrupt: bool = True
    #: Answer 200 with a body that is not valid JSON.
    malformed_json: bool = False
    #: With ``status``: append the request's headers (the key included) to the error message.
    echo_headers: bool = False
    #: Cut the ``data:`` of the stream event at this index in the middle (not valid JSON), then go on
    #: with the rest and ``[DONE]``; with ``die_after`` one past it, the stream ends mid-event.
    broken_event: int | None = None
    #: Accept parameters the real API does not know (as many OpenAI-compatible servers do).
    allow_unknown_parameters: bool = False
    #: Apply the faults above (status, delay, malformed JSON, die_after) to the first this many API
    #: requests only, then answer normally (0: to every request).
    faults_for: int = 0


#: The behaviour applied to one request (``faults_for`` decides per request).
BEHAVIOUR = web.RequestKey("behaviour", Behaviour)


class _ClientGone(Exception):
    """Writing to the caller failed: it closed the connection."""


class _Died(Exception):
    """The fake broke its own connection on purpose (``Behaviour.die_after``)."""


def _error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers or None
    )


def embedding_for(text: str, dimensions: int) -> list[float]:
    """The fake's embedding of ``text``: deterministic values that are exact in float32."""
    digest = hashlib.sha256(text.encode()).digest()
    return [((digest[i % 32] + i) % 256) / 128.0 - 1.0 for i in range(dimensions)]


def split_reply(text: str, pieces: int) -> list[str]:
    """Split ``text`` into ``pieces`` consecutive, non-empty parts (fewer when the text is short)."""
    pieces = max(1, min(pieces, len(text))) if text else 1
    size, extra = divmod(len(text), pieces)
    out, start = [], 0
    for index in range(pieces):
        end = start + size + (1 if index < extra else 0)
        out.append(text[start:end])
        start = end
    return out


class FakeOpenAI(BackgroundServer[RecordedRequest]):
    """The fake OpenAI API server; see the module docstring."""

    name = "fake-openai"
    record_type = RecordedRequest

    def __init__(self, api_key: str = DEFAULT_API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        #: Further API keys the fake accepts (a gateway's credential pool).
        self.other_keys: set[str] = set()
        self.behaviour = Behaviour()
        self._faulted = 0
        #: Requests whose caller went away before the answer was complete (stream or not).
        self.aborted: list[RecordedRequest] = []
        #: Streams the fake sent to the end: counted as their ``[DONE]`` goes out.
        self.completed_streams = 0
        #: ``url`` + ``/v1``, as the ``openai`` SDK takes it; known once started.
        self.base_url = ""

    # --- control -------------------------------------------------------------------------------------

    def behave(self, **changes: Any) -> Behaviour:
        """Replace the behaviour: defaults plus ``changes``."""
        with self._lock:
            self.behaviour = Behaviour(**changes)
            self._faulted = 0
        return self.behaviour

    def reset(self) -> None:
        """Back to normal answers, with no recorded requests."""
        with self._lock:
            self.behaviour = Behaviour()
            self._faulted = 0
            self.requests.clear()
            self.aborted.clear()
            self.completed_streams = 0

    def keys_used(self, path: str = "/v1/chat/completions") -> list[str]:
        """The API key (``Authorization: Bearer``) of each recorded request to ``path``, in order."""
        return [r.headers.get("authorization", "").removeprefix("Bearer ") for r in self.requests_to(path)]

    def was_aborted(self, marker: str) -> bool:
        """Whether a request whose body contains ``marker`` was abandoned by its caller."""
        with self._lock:
            return any(marker.encode() in r.body for r in self.aborted)

    def wait_aborted(self, marker: str, timeout: float = 3.0) -> bool:
        """Wait (bounded) until :meth:`was_aborted` is true; return whether it became true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.was_aborted(marker):
                return True
            time.sleep(0.02)
        return self.was_aborted(marker)

    async def wait_aborted_async(self, marker: str, timeout: float = 3.0) -> bool:
        """:meth:`wait_aborted` for async tests: polls without blocking the test's event loop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.was_aborted(marker):
                return True
            await asyncio.sleep(0.02)
        return self.was_aborted(marker)

    # --- life cycle ----------------------------------------------------------------------------------

    def start(self) -> Self:
        super().start()
        self.base_url = f"{self.url}/v1"
        return self

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._guard(self._chat))
        app.router.add_post("/v1/embeddings", self._guard(self._embeddings))
        app.router.add_get("/v1/models", self._guard(self._list_models))
        app.router.add_get("/v1/models/{model}", self._guard(self._retrieve_model))

    # --- request handling ----------------------------------------------------------------------------

    def _guard(self, handler: Callable[[web.Request, RecordedRequest], Any]) -> Callable[[web.Request], Any]:
        """Record the request, check the key, apply injected faults, then run ``handler``."""

        async def handle(request: web.Request) -> web.StreamResponse:
            recorded = await self._record(request)
            behaviour = self.behaviour
            if behaviour.faults_for:
                with self._lock:
                    self._faulted += 1
                    if self._faulted > behaviour.faults_for:
                        behaviour = Behaviour(
                            reply=behaviour.reply, tool_calls=behaviour.tool_calls, chunks=behaviour.chunks
                        )
            request[BEHAVIOUR] = behaviour
            try:
                if behaviour.delay:
                    await asyncio.sleep(behaviour.delay)
                denied = self._check_key(request)
                if denied is not None:
                    return denied
                if behaviour.status is not None:
                    return _error(
                        behaviour.status,
                        echoed_headers(behaviour.message, request)
                        if behaviour.echo_headers
                        else behaviour.message,
                        type=behaviour.type,
                        code=behaviour.code,
                        headers=behaviour.headers,
                    )
                if behaviour.malformed_json:
                    return web.Response(
                        body=b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess',
                        content_type="application/json",
                    )
                response: web.StreamResponse = await handler(request, recorded)
                return response
            except _Died:
                raise asyncio.CancelledError from None
            except (asyncio.CancelledError, _ClientGone):
                with self._lock:
                    self.aborted.append(recorded)
                # aiohttp ends a handler quietly on a cancel (the connection is gone anyway).
                raise asyncio.CancelledError from None

        return handle

    def _check_key(self, request: web.Request) -> web.Response | None:
        authorization = request.headers.get("Authorization", "")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with "
                "blank username) if you're accessing the API from your browser and are prompted for a "
                "username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
            )
        key = key.strip()
        if key != self.api_key and key not in self.other_keys:
            shown = f"{key[:3]}*********{key[-4:]}" if len(key) > 8 else key
            return _error(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        return None

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}-fake{self._next_number():06d}"

    def _headers(self) -> dict[str, str]:
        headers = {
            "x-request-id": self._next_id("req"),
            "openai-processing-ms": "42",
            "openai-version": "2020-10-01",
        }
        headers.update(self.behaviour.headers)
        return headers

    @staticmethod
    def _parse(recorded: RecordedRequest) -> dict[str, Any] | web.Response:
        try:
            data = orjson.loads(recorded.body)
        except orjson.JSONDecodeError:
            return _error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
                "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
                "help center at help.openai.com.)",
            )
        if not isinstance(data, dict):
            return _error(
                400, f"Invalid type for request body: expected an object, but got {type(data).__name__}."
            )
        return data

    def _unknown_parameter(self, data: dict[str, Any], known: frozenset[str]) -> web.Response | None:
        if self.behaviour.allow_unknown_parameters:
            return None
        unknown = sorted(set(data) - known)
        if unknown:
            return _error(
                400,
                f"Unrecognized request argument supplied: {unknown[0]}",
            )
        return None

    async def _chat(self, request: web.Request, recorded: RecordedRequest) -> web.StreamResponse:
        data = self._parse(recorded)
        if isinstance(data, web.Response):
            return data
        if "model" not in data:
            return _error(400, "you must provide a model parameter")
        model = data["model"]
        messages = data.get("messages")
        if messages is None:
            return _error(
                400,
                "Missing required parameter: 'messages'.",
                param="messages",
                code="missing_required_parameter",
            )
        if not isinstance(messages, list) or not messages:
            return _error(
                400,
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty "
                "array instead.",
                param="messages",
                code="empty_array",
            )
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                role = message.get("role") if isinstance(message, dict) else None
                return _error(
                    400,
                    f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', "
                    "'function', 'tool', and 'developer'.",
                    param=f"messages[{index}].role",
                    code="invalid_value",
                )
        stream = data.get("stream") is True
        if data.get("stream_options") is not None and not stream:
            return _error(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code=None,
            )
        unknown = self._unknown_parameter(data, CHAT_PARAMETERS)
        if unknown is not None:
            return unknown
        if model not in CHAT_MODELS:
            return _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        behaviour: Behaviour = request.get(BEHAVIOUR, self.behaviour)
        if behaviour.reply is not None:
            reply = behaviour.reply
        else:
            users = [m for m in messages if m.get("role") == "user"]
            content = users[-1].get("content") if users else ""
            reply = "Echo: " + (content if isinstance(content, str) else "")
        calls = behaviour.tool_calls
        generated = " ".join(arguments for _, arguments in calls) if calls is not None else reply
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(generated.split()),
            "total_tokens": prompt_tokens + len(generated.split()),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        completion_id = self._next_id("chatcmpl")
        if not stream:
            answer = {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": reply if calls is None else None,
                            **({} if calls is None else {"tool_calls": self._tool_calls(calls)}),
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": "stop" if calls is None else "tool_calls",
                    }
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": "fp_fake0001",
            }
            return web.Response(
                body=orjson.dumps(answer), content_type="application/json", headers=self._headers()
            )
        stream_options = data.get("stream_options") or {}
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        return await self._stream(request, completion_id, model, reply, usage if include_usage else None)

    async def _stream(
        self, request: web.Request, completion_id: str, model: str, reply: str, usage: dict[str, Any] | None
    ) -> web.StreamResponse:
        behaviour: Behaviour = request.get(BEHAVIOUR, self.behaviour)
        head: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        head["service_tier"] = "default"
        head["system_fingerprint"] = "fp_fake0001"
        # With include_usage every chunk carries "usage": null, and a last chunk without choices the usage.
        tail: dict[str, Any] = {} if usage is None else {"usage": None}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return b"data: " + orjson.dumps({**head, "choices": [choice], **tail}) + b"\n\n"

        calls = behaviour.tool_calls
        if calls is None:
            events = [chunk({"role": "assistant", "content": "", "refusal": None})]
            events += [chunk({"content": piece}) for piece in split_reply(reply, behaviour.chunks)]
            events.append(chunk({}, "stop"))
        else:
            # As OpenAI streams calls: the first chunk opens the first call, each call opens with its id
            # and name and empty arguments, then its arguments follow in pieces.
            events = []
            for index, call in enumerate(self._tool_calls(calls)):
                opening = {"index": index, **call, "function": {**call["function"], "arguments": ""}}
                delta: dict[str, Any] = {"tool_calls": [opening]}
                if not index:
                    delta = {"role": "assistant", "content": None, **delta, "refusal": None}
                events.append(chunk(delta))
                events += [
                    chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                    for piece in split_reply(call["function"]["arguments"], behaviour.chunks)
                    if piece
                ]
            events.append(chunk({}, "tool_calls"))
        if usage is not None:
            events.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        if behaviour.broken_event is not None:
            events[behaviour.broken_event] = broken_event(events[behaviour.broken_event])

        response = web.StreamResponse(headers=self._headers())
        response.content_type = "text/event-stream"
        response.charset = "utf-8"
        await response.prepare(request)
        for index, event in enumerate(events):
            if behaviour.die_after is not None and index >= behaviour.die_after:
                if behaviour.abrupt and request.transport is not None:
                    request.transport.abort()
                    raise _Died
                await response.write_eof()
                return response
            if index and behaviour.chunk_interval:
                await asyncio.sleep(behaviour.chunk_interval)
            if request.transport is None or request.transport.is_closing():
                raise _ClientGone
            if event is events[-1]:
                # Counted before [DONE] goes out: a caller that has read it sees the count.
                with self._lock:
                    self.completed_streams += 1
            try:
                await response.write(event)
            except (ConnectionError, RuntimeError) as exc:
                raise _ClientGone from exc
        await response.write_eof()
        return response

    def _tool_calls(self, calls: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The ``tool_calls`` of an answer calling ``calls``, ``(name, JSON arguments)`` each."""
        return [
            {
                "id": f"call_fake{self._next_number():06d}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            for name, arguments in calls
        ]

    async def _embeddings(self, request: web.Request, recorded: RecordedRequest) -> web.StreamResponse:
        data = self._parse(recorded)
        if isinstance(data, web.Response):
            return data
        if "model" not in data:
            return _error(400, "you must provide a model parameter")
        if "input" not in data:
            return _error(
                400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
            )
        unknown = self._unknown_parameter(data, EMBEDDING_PARAMETERS)
        if unknown is not None:
            return unknown
        model = data["model"]
        if model not in EMBEDDING_MODELS:
            return _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        encoding_format = data.get("encoding_format", "float")
        if encoding_format not in ("float", "base64"):
            return _error(
                400,
                f"Invalid value: '{encoding_format}'. Supported values are: 'float' and 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
        dimensions = data.get("dimensions") or EMBEDDING_MODELS[model]
        raw_input = data["input"]
        inputs = (
            raw_input
            if isinstance(raw_input, list) and raw_input and isinstance(raw_input[0], str)
            else [raw_input]
        )
        items = []
        tokens = 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += len(text.split())
            vector = embedding_for(text, dimensions)
            embedding: Any = vector
            if encoding_format == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            items.append({"object": "embedding", "index": index, "embedding": embedding})
        body = {
            "object": "list",
            "data": items,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=self._headers())

    async def _list_models(self, request: web.Request, recorded: RecordedRequest) -> web.StreamResponse:
        data = [self._model(name) for name in (*CHAT_MODELS, *EMBEDDING_MODELS)]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def _retrieve_model(self, request: web.Request, recorded: RecordedRequest) -> web.StreamResponse:
        model = request.match_info["model"]
        if model not in CHAT_MODELS and model not in EMBEDDING_MODELS:
            return _error(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
        return web.Response(body=orjson.dumps(self._model(model)), content_type="application/json")

    @staticmethod
    def _model(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": CREATED, "owned_by": "system"}
