"""A fake Gemini API on 127.0.0.1 that answers and validates like generativelanguage.googleapis.com.

It serves, under ``/v1beta`` and ``/v1``, the methods ``models/{model}:generateContent``,
``:streamGenerateContent`` (``?alt=sse`` frames each response as ``data: {json}\\r\\n\\r\\n``; without
it the answer is one JSON array, as Google does), ``:countTokens``, ``:embedContent`` and
``:batchEmbedContents``, plus ``GET models`` and ``GET models/{model}``, from an aiohttp server
running in a background thread.

Like the real API it takes the key from ``x-goog-api-key`` or ``?key=``, answers errors as
``{"error": {"code", "message", "status", "details"}}``, rejects unknown fields (``Invalid JSON payload
received. Unknown name "x" at 'generation_config': Cannot find field.``), roles other than
``user``/``model``, empty parts, function responses that do not follow a function call and, for
``gemini-3*`` models, history function calls without the thought signature it issued.

Error messages Google is known to send are reproduced word for word; the few checks whose wording is
not public (mutually exclusive fields, ``allowedFunctionNames`` outside mode ``ANY``, a response schema
without a JSON MIME type, an embedding request for another model) are worded in Google's style.

Answers are deterministic: ``"Echo: "`` + the last user text, unless :meth:`FakeGemini.script` queued
:class:`Reply` objects (function calls, thoughts, blocked prompts, other finish reasons). Every request
is recorded; :class:`Behaviour` injects faults (a status with Google's error body, 429 with
``RetryInfo``, delays, streams that die).

    with FakeGemini() as fake:
        fake.script(Reply(function_calls=[("get_weather", {"city": "Paris"})]))
        ...
        assert fake.requests[-1].json["contents"][0]["role"] == "user"
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import embedding_for, split_reply
from tests.fakes.server import BackgroundServer, RecordedRequestWithQuery, broken_event

DEFAULT_API_KEY = "AIzaSyFakeUpstreamKey-0123456789abcdef"

CHAT_MODELS = ("gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-pro-preview")
EMBEDDING_MODELS = {"text-embedding-004": 768, "gemini-embedding-001": 3072}

#: Google's canonical status name of each HTTP status.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
DEFAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
INVALID_KEY_MESSAGE = "API key not valid. Please pass a valid API key."
MISSING_KEY_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key "
    "or other form of API consumer identity to call this API."
)
THOUGHT_SIGNATURE_DOCS = (
    "please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
)
#: Signatures the real API accepts in place of one it issued.
DUMMY_SIGNATURES = frozenset({"skip_thought_signature_validator", "context_engineering_is_the_way_to_go"})

# --- the request messages the fake knows, field by field -------------------------------------------
# A field's kind is a scalar ("string", "float", "int", "bool", "bytes"), "any" (not checked), "struct"
# (any JSON object), "enum:<Name>", a message name, "[" + kind for a repeated field or "{" + kind for a
# map. Names are the JSON (camelCase) names; error paths use the proto (snake_case) names, as Google's do.

MESSAGES: dict[str, dict[str, str]] = {
    "GenerateContentRequest": {
        "model": "string",
        "contents": "[Content",
        "systemInstruction": "Content",
        "tools": "[Tool",
        "toolConfig": "ToolConfig",
        "safetySettings": "[SafetySetting",
        "generationConfig": "GenerationConfig",
        "cachedContent": "string",
        "serviceTier": "string",
        "store": "bool",
    },
    "Content": {"parts": "[Part", "role": "string"},
    "Part": {
        "text": "string",
        "inlineData": "Blob",
        "fileData": "FileData",
        "functionCall": "FunctionCall",
        "functionResponse": "FunctionResponse",
        "executableCode": "any",
        "codeExecutionResult": "any",
        "thought": "bool",
        "thoughtSignature": "bytes",
        "videoMetadata": "any",
        "partMetadata": "struct",
        "mediaResolution": "any",
    },
    "Blob": {"mimeType": "string", "data": "bytes"},
    "FileData": {"mimeType": "string", "fileUri": "string"},
    "FunctionCall": {"id": "string", "name": "string", "args": "struct"},
    "FunctionResponse": {
        "id": "string",
        "name": "string",
        "response": "struct",
        "parts": "any",
        "willContinue": "bool",
        "scheduling": "any",
    },
    "Tool": {
        "functionDeclarations": "[FunctionDeclaration",
        "googleSearchRetrieval": "any",
        "codeExecution": "any",
        "googleSearch": "any",
        "urlContext": "any",
        "computerUse": "any",
        "fileSearch": "any",
        "googleMaps": "any",
    },
    "FunctionDeclaration": {
        "name": "string",
        "description": "string",
        "parameters": "Schema",
        "parametersJsonSchema": "any",
        "response": "Schema",
        "responseJsonSchema": "any",
        "behavior": "any",
    },
    "Schema": {
        "type": "enum:Type",
        "format": "string",
        "title": "string",
        "description": "string",
        "nullable": "bool",
        "enum": "[string",
        "maxItems": "int",
        "minItems": "int",
        "properties": "{Schema",
        "required": "[string",
        "minProperties": "int",
        "maxProperties": "int",
        "minLength": "int",
        "maxLength": "int",
        "pattern": "string",
        "example": "any",
        "anyOf": "[Schema",
        "propertyOrdering": "[string",
        "default": "any",
        "items": "Schema",
        "minimum": "float",
        "maximum": "float",
    },
    "ToolConfig": {"functionCallingConfig": "FunctionCallingConfig", "retrievalConfig": "any"},
    "FunctionCallingConfig": {"mode": "enum:FunctionCallingConfig.Mode", "allowedFunctionNames": "[string"},
    "SafetySetting": {"category": "string", "threshold": "string"},
    "GenerationConfig": {
        "candidateCount": "int",
        "stopSequences": "[string",
        "maxOutputTokens": "int",
        "temperature": "float",
        "topP": "float",
        "topK": "int",
        "seed": "int",
        "responseMimeType": "string",
        "responseSchema": "Schema",
        "responseJsonSchema": "any",
        "presencePenalty": "float",
        "frequencyPenalty": "float",
        "responseLogprobs": "bool",
        "logprobs": "int",
        "enableEnhancedCivicAnswers": "bool",
        "responseModalities": "[string",
        "speechConfig": "any",
        "thinkingConfig": "ThinkingConfig",
        "mediaResolution": "string",
        "imageConfig": "any",
    },
    "ThinkingConfig": {"includeThoughts": "bool", "thinkingBudget": "int", "thinkingLevel": "string"},
    "EmbedContentRequest": {
        "model": "string",
        "content": "Content",
        "taskType": "string",
        "title": "string",
        "outputDimensionality": "int",
    },
    "BatchEmbedContentsRequest": {"requests": "[EmbedContentRequest"},
    "CountTokensRequest": {"contents": "[Content", "generateContentRequest": "GenerateContentRequest"},
}
#: The request message of each method.
REQUEST_MESSAGES = {
    "generateContent": "GenerateContentRequest",
    "streamGenerateContent": "GenerateContentRequest",
    "countTokens": "CountTokensRequest",
    "embedContent": "EmbedContentRequest",
    "batchEmbedContents": "BatchEmbedContentsRequest",
}
ENUMS = {
    "Type": frozenset(
        {"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
    ),
    "FunctionCallingConfig.Mode": frozenset({"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"}),
}
_SCALAR_TYPES = {"string": "TYPE_STRING", "float": "TYPE_FLOAT", "int": "TYPE_INT32", "bool": "TYPE_BOOL"}
_PART_DATA = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
              "codeExecutionResult")  # fmt: skip
_PROTO_PACKAGE = "type.googleapis.com/google.ai.generativelanguage.v1beta"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def _show(value: Any) -> str:
    return orjson.dumps(value).decode()


def validate(value: Any, kind: str, path: str = "") -> list[tuple[str, str]]:
    """Google's complaints about ``value`` as a ``kind``: ``(field path, description)`` pairs."""
    problems: list[tuple[str, str]] = []
    _check(value, kind, path, problems)
    return problems


def _check(value: Any, kind: str, path: str, problems: list[tuple[str, str]]) -> None:
    if kind == "any" or value is None:
        return
    if kind.startswith("["):
        if not isinstance(value, list):
            value = [value]  # proto JSON accepts a single value for a repeated field
        for index, item in enumerate(value):
            _check(item, kind[1:], f"{path}[{index}]", problems)
        return
    if kind.startswith("{"):
        if not isinstance(value, dict):
            problems.append((path, f"Invalid value at '{path}', {_show(value)}"))
            return
        for index, item in enumerate(value.values()):
            _check(item, kind[1:], f"{path}[{index}].value", problems)
        return
    if kind.startswith("enum:"):
        name = kind[5:]
        allowed = ENUMS[name]
        if not isinstance(value, str) or (value.upper() if name == "Type" else value) not in allowed:
            problems.append((path, f"Invalid value at '{path}' ({_PROTO_PACKAGE}.{name}), {_show(value)}"))
        return
    if kind == "struct":
        if not isinstance(value, dict):
            problems.append((path, f"Invalid value at '{path}' (type.googleapis.com/google.protobuf.Struct), "
                                   f"{_show(value)}"))  # fmt: skip
        return
    if kind == "bytes":
        if not _is_base64(value):
            problems.append(
                (path, f"Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed for {_show(value)}")
            )
        return
    if kind in _SCALAR_TYPES:
        if not _scalar_ok(value, kind):
            problems.append((path, f"Invalid value at '{path}' ({_SCALAR_TYPES[kind]}), {_show(value)}"))
        return
    fields = MESSAGES[kind]
    if not isinstance(value, dict):
        problems.append((path, f"Invalid value at '{path}' ({_PROTO_PACKAGE}.{kind}), {_show(value)}"))
        return
    for original, item in value.items():
        name = _camel(original)  # proto JSON accepts the proto (snake_case) names as well
        if name not in fields:
            where = f" at '{path}'" if path else ""
            problems.append(
                (path, f'Invalid JSON payload received. Unknown name "{original}"{where}: Cannot find field.')
            )
            continue
        child = _snake(name)
        _check(item, fields[name], f"{path}.{child}" if path else child, problems)


def _is_base64(value: Any) -> bool:
    """Whether Google would decode ``value`` as bytes (standard or URL-safe base64)."""
    return (
        isinstance(value, str)
        and re.fullmatch(r"[A-Za-z0-9+/_-]*={0,2}", value) is not None
        and len(value.rstrip("=")) % 4 != 1
    )


def normalize(value: Any, kind: str) -> Any:
    """``value`` (already validated as a ``kind``) with every field under its JSON (camelCase) name."""
    if (
        value is None
        or kind in ("any", "struct")
        or kind in _SCALAR_TYPES
        or kind.startswith(("enum:", "bytes"))
    ):
        return value
    if kind.startswith("["):
        return [normalize(item, kind[1:]) for item in (value if isinstance(value, list) else [value])]
    if kind.startswith("{"):
        return {key: normalize(item, kind[1:]) for key, item in value.items()}
    fields = MESSAGES[kind]
    return {_camel(name): normalize(item, fields[_camel(name)]) for name, item in value.items()}


def _base64_bytes(value: str) -> bytes:
    """The bytes of standard or URL-safe base64, padded or not (Google compares bytes, not text)."""
    return base64.urlsafe_b64decode(value.replace("+", "-").replace("/", "_") + "=" * (-len(value) % 4))


def _scalar_ok(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int) or (
            isinstance(value, str) and re.fullmatch(r"-?\d+", value) is not None
        )
    return isinstance(value, int | float) or (isinstance(value, str) and _is_float(value))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- behaviour, scripted replies, recording ----------------------------------------------------------


@dataclass
class Behaviour:
    """How the fake answers until the next :meth:`FakeGemini.behave` or :meth:`FakeGemini.reset`."""

    #: Answer API requests with this status and a Google error body (after the key check).
    status: int | None = None
    #: The error's message and Google status name; defaults follow the HTTP status.
    message: str | None = None
    google_status: str | None = None
    #: The error's ``details``; with ``retry_delay`` (e.g. ``"17s"``) a 429 gets QuotaFailure + RetryInfo.
    details: list[dict[str, Any]] | None = None
    retry_delay: str | None = None
    #: Apply the fault to this many requests only, then answer normally.
    times: int | None = None
    #: Extra response headers on every answer.
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before sending the response headers.
    delay: float = 0.0
    #: Pieces the streamed text is split into, and seconds between streamed events.
    chunks: int = 3
    chunk_interval: float = 0.0
    #: Stop the stream after this many events: reset the connection (``abrupt``) or end the body cleanly.
    die_after: int | None = None
    abrupt: bool = True
    #: Answer 200 with a body that is not valid JSON.
    malformed_json: bool = False
    #: On ``alt=sse`` streams: cut the ``data:`` of the event at this index in the middle (not valid
    #: JSON), then go on with the rest; with ``die_after`` one past it, the stream ends mid-event.
    broken_event: int | None = None


@dataclass
class Reply:
    """One scripted answer; queued replies are used once each, in order, before the echo resumes."""

    text: str | None = None
    #: Function calls as ``(name, args)``; on ``gemini-3*`` models the first carries a thought signature.
    function_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: A thought summary (sent as a ``thought: true`` part when ``includeThoughts`` is set; always counted).
    thought: str | None = None
    finish_reason: str = "STOP"
    #: Block the prompt: no candidates, ``promptFeedback.blockReason`` set to this.
    block_reason: str | None = None
    cached_tokens: int = 0


@dataclass(frozen=True)
class RecordedRequest(RecordedRequestWithQuery):
    """One request the fake received, with its query parameters."""

    @property
    def method_name(self) -> str:
        """The Gemini method, e.g. ``generateContent`` (empty for ``GET`` requests)."""
        return self.path.rpartition(":")[2] if ":" in self.path else ""


class _ClientGone(Exception):
    """Writing to the caller failed: it closed the connection."""


class _Died(Exception):
    """The fake broke its own connection on purpose (``Behaviour.die_after``)."""


def google_error(
    code: int,
    message: str | None = None,
    *,
    status: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Google's error body."""
    error: dict[str, Any] = {
        "code": code,
        "message": message if message is not None else DEFAULT_MESSAGES.get(code, "Unknown error."),
        "status": status or STATUS_NAMES.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def _error(
    code: int,
    message: str | None = None,
    *,
    status: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = orjson.dumps(
        google_error(code, message, status=status, details=details), option=orjson.OPT_INDENT_2
    )
    return web.Response(
        status=code,
        body=body + b"\n",
        content_type="application/json",
        charset="UTF-8",
        headers=headers or None,
    )


def _bad_request(problems: list[tuple[str, str]]) -> web.Response:
    violations = [
        {"field": path, "description": text} if path else {"description": text} for path, text in problems
    ]
    return _error(
        400,
        "\n".join(text for _, text in problems),
        details=[{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}],
    )


def _invalid(message: str) -> web.Response:
    return _error(400, message)


def invalid_key_details() -> list[dict[str, Any]]:
    return [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": INVALID_KEY_MESSAGE,
        },
    ]


def quota_details(model: str, retry_delay: str) -> list[dict[str, Any]]:
    """The ``details`` of Google's 429: the quota that ran out, a help link and when to retry."""
    return [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": "15",
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
    ]


def _version(request: web.Request) -> str:
    return request.path.split("/")[1]


def _words(text: str) -> int:
    return len(text.split())


def _content_texts(content: dict[str, Any]) -> list[str]:
    return [
        p["text"]
        for p in content.get("parts") or []
        if isinstance(p, dict) and isinstance(p.get("text"), str)
    ]


class FakeGemini(BackgroundServer[RecordedRequest]):
    """The fake Gemini API server; see the module docstring."""

    name = "fake-gemini"
    record_type = RecordedRequest
    reserve_port = True

    def __init__(self, api_key: str = DEFAULT_API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.behaviour = Behaviour()
        #: Requests whose caller went away before the answer was complete.
        self.aborted: list[RecordedRequest] = []
        #: Streams the fake sent to the end.
        self.completed_streams = 0
        #: Thought signatures (decoded) the fake handed out; a ``gemini-3*`` history must bring them back.
        self.signatures: set[bytes] = set()
        self._replies: deque[Reply] = deque()
        self._faults_left: int | None = None
        #: ``url`` is what the SDK takes as its base URL (it appends the version); this is the v1beta root.
        self.base_url = f"{self.url}/v1beta"

    # --- control -------------------------------------------------------------------------------------

    def behave(self, **changes: Any) -> Behaviour:
        """Replace the behaviour: defaults plus ``changes``."""
        with self._lock:
            self.behaviour = Behaviour(**changes)
            self._faults_left = self.behaviour.times
        return self.behaviour

    def script(self, *replies: Reply) -> None:
        """Queue answers for the next chat requests (streamed or not)."""
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        """Back to normal answers, with nothing queued or recorded."""
        with self._lock:
            self.behaviour = Behaviour()
            self._faults_left = None
            self._replies.clear()
            self.requests.clear()
            self.aborted.clear()
            self.signatures.clear()
            self.completed_streams = 0

    def requests_to(self, method: str) -> list[RecordedRequest]:
        """The recorded requests to one Gemini method (``generateContent``, ``batchEmbedContents``, ...)."""
        with self._lock:
            return [r for r in self.requests if r.method_name == method]

    def wait_aborted(self, timeout: float = 3.0) -> bool:
        """Wait (bounded) until a request was abandoned by its caller."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.aborted:
                    return True
            time.sleep(0.02)
        return bool(self.aborted)

    # --- request handling ----------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        for version in ("v1beta", "v1"):
            app.router.add_post(f"/{version}/models/{{target}}", self._guard(self._dispatch))
            app.router.add_get(f"/{version}/models", self._guard(self._list_models))
            app.router.add_get(f"/{version}/models/{{target}}", self._guard(self._get_model))

    def _guard(self, handler: Callable[[web.Request, RecordedRequest], Any]) -> Callable[[web.Request], Any]:
        """Record the request, check the key, apply injected faults, then run ``handler``."""

        async def handle(request: web.Request) -> web.StreamResponse:
            # Recorded under the same lock as the behaviour is read: the two belong together.
            recorded = RecordedRequest.of(request, await request.read())
            with self._lock:
                self.requests.append(recorded)
                behaviour = self.behaviour
                fault = behaviour.status is not None and self._faults_left != 0
                if fault and self._faults_left is not None:
                    self._faults_left -= 1
            try:
                if behaviour.delay:
                    await asyncio.sleep(behaviour.delay)
                denied = self._check_key(request)
                if denied is not None:
                    return denied
                if fault and behaviour.status is not None:
                    return self._fault(behaviour, request)
                if behaviour.malformed_json:
                    return web.Response(
                        body=b'{"candidates": [{"content": {"parts": [{"te', content_type="application/json"
                    )
                response: web.StreamResponse = await handler(request, recorded)
                return response
            except _Died:
                raise asyncio.CancelledError from None
            except (asyncio.CancelledError, _ClientGone):
                with self._lock:
                    self.aborted.append(recorded)
                raise asyncio.CancelledError from None

        return handle

    def _fault(self, behaviour: Behaviour, request: web.Request) -> web.Response:
        assert behaviour.status is not None
        details = behaviour.details
        if details is None and behaviour.retry_delay is not None:
            model = request.match_info.get("target", "").partition(":")[0]
            details = quota_details(model, behaviour.retry_delay)
        return _error(
            behaviour.status,
            behaviour.message,
            status=behaviour.google_status,
            details=details,
            headers=behaviour.headers,
        )

    def _check_key(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return _error(403, MISSING_KEY_MESSAGE)
        if key != self.api_key:
            return _error(400, INVALID_KEY_MESSAGE, details=invalid_key_details())
        return None

    def _next_id(self) -> str:
        return f"fakeResp{self._next_number():06d}"

    def _headers(self) -> dict[str, str]:
        headers = {"server-timing": "gfet4t7; dur=42", "x-gemini-service-tier": "standard"}
        headers.update(self.behaviour.headers)
        return headers

    @staticmethod
    def _parse(recorded: RecordedRequest) -> dict[str, Any] | web.Response:
        try:
            data = orjson.loads(recorded.body or b"{}")
        except orjson.JSONDecodeError as exc:
            return _bad_request([("", f"Invalid JSON payload received. {exc}")])
        if not isinstance(data, dict):
            return _bad_request(
                [("", f"Invalid JSON payload received. Expected an object, got {_show(data)}.")]
            )
        return data

    async def _dispatch(self, request: web.Request, recorded: RecordedRequest) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        handlers = {
            "generateContent": self._generate,
            "streamGenerateContent": self._generate,
            "countTokens": self._count_tokens,
            "embedContent": self._embed,
            "batchEmbedContents": self._embed,
        }
        if method not in handlers:
            return _error(404, f"Method not found: {method or '(none)'}.")
        embedding = method in ("embedContent", "batchEmbedContents")
        if model not in (EMBEDDING_MODELS if embedding else CHAT_MODELS):
            return _error(
                404,
                f"models/{model} is not found for API version {_version(request)}, or is not supported for {method}. "
                "Call ListModels to see the list of available models and their supported methods.",
            )
        data = self._parse(recorded)
        if isinstance(data, web.Response):
            return data
        kind = REQUEST_MESSAGES[method]
        problems = validate(data, kind)
        if problems:
            return _bad_request(problems)
        response: web.StreamResponse = await handlers[method](request, model, method, normalize(data, kind))
        return response

    # --- generateContent -----------------------------------------------------------------------------

    def _check_generate(
        self, data: dict[str, Any], model: str, prefix: str = "GenerateContentRequest"
    ) -> web.Response | None:
        contents = data.get("contents")
        if not contents:
            return _invalid(f"* {prefix}.contents: contents is not specified\n")
        for i, content in enumerate(contents):
            role = content.get("role")
            if role is not None and role not in ("user", "model"):
                return _invalid("Please use a valid role: user, model.")
            parts = content.get("parts")
            if not parts:
                return _invalid(f"* {prefix}.contents[{i}].parts: contents.parts must not be empty.\n")
            for j, part in enumerate(parts):
                if not any(part.get(name) not in (None, "") for name in _PART_DATA):
                    return _invalid(
                        f"* {prefix}.contents[{i}].parts[{j}].data: required oneof field 'data' must have one "
                        "initialized field\n"
                    )
        ordering = self._check_turns(contents, model)
        if ordering is not None:
            return ordering
        # The checks below are documented rules whose exact error wording is not public.
        for i, tool in enumerate(data.get("tools") or []):
            for j, declaration in enumerate(tool.get("functionDeclarations") or []):
                if "parameters" in declaration and "parametersJsonSchema" in declaration:
                    return _invalid(
                        f"* {prefix}.tools[{i}].function_declarations[{j}].parameters_json_schema: "
                        "parameters_json_schema and parameters are mutually exclusive\n"
                    )
        calling = (data.get("toolConfig") or {}).get("functionCallingConfig") or {}
        if calling.get("allowedFunctionNames") and calling.get("mode") not in ("ANY", "VALIDATED"):
            return _invalid(
                f"* {prefix}.tool_config.function_calling_config.allowed_function_names: allowed_function_names "
                "may only be set when mode is ANY or VALIDATED\n"
            )
        config = data.get("generationConfig") or {}
        if "responseSchema" in config and "responseJsonSchema" in config:
            return _invalid(
                f"* {prefix}.generation_config.response_json_schema: response_json_schema and response_schema "
                "are mutually exclusive\n"
            )
        if ("responseSchema" in config or "responseJsonSchema" in config) and config.get(
            "responseMimeType"
        ) not in ("application/json", "text/x.enum"):
            return _invalid(
                f"* {prefix}.generation_config.response_mime_type: a response schema requires "
                "response_mime_type application/json\n"
            )
        return None

    def _check_turns(self, contents: list[dict[str, Any]], model: str) -> web.Response | None:
        """Function calls follow user turns, responses follow calls, one response per call."""
        previous: dict[str, Any] | None = None
        last_user_text = max(
            (i for i, c in enumerate(contents) if c.get("role", "user") == "user" and _content_texts(c)),
            default=-1,
        )
        for i, content in enumerate(contents):
            parts = content["parts"]
            calls = [p for p in parts if "functionCall" in p]
            responses = [p for p in parts if "functionResponse" in p]
            if calls:
                if previous is None or previous.get("role", "user") != "user":
                    return _invalid(
                        "Please ensure that function call turn comes immediately after a user turn or after a "
                        "function response turn."
                    )
                if model.startswith("gemini-3") and i > last_user_text:
                    first = calls[0]
                    signature = first.get("thoughtSignature")
                    if not signature:
                        position = parts.index(first) + 1
                        return _invalid(
                            "Function call is missing a thought_signature in functionCall parts. This is required "
                            "for tools to work correctly, and missing thought_signature may lead to degraded model "
                            f"performance. Additional data, function call `default_api:{first['functionCall'].get('name')}` "
                            f", position {position}. {THOUGHT_SIGNATURE_DOCS}"
                        )
                    if signature not in DUMMY_SIGNATURES and _base64_bytes(signature) not in self.signatures:
                        return _invalid("Corrupted thought signature.")
            if responses:
                before = [p for p in (previous or {}).get("parts", []) if "functionCall" in p]
                if previous is None or previous.get("role") != "model" or not before:
                    return _invalid(
                        "Please ensure that function response turn comes immediately after a function call turn."
                    )
                if len(before) != len(responses):
                    return _invalid(
                        "Please ensure that the number of function response parts is equal to the number of "
                        "function call parts of the function call turn."
                    )
            previous = content
        return None

    def _next_reply(self, data: dict[str, Any]) -> Reply:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        last = data["contents"][-1]
        answers = [p["functionResponse"] for p in last["parts"] if "functionResponse" in p]
        if answers:
            results = "; ".join(f"{a.get('name')}: {_show(a.get('response'))}" for a in answers)
            return Reply(text=f"Results: {results}")
        users = [c for c in data["contents"] if c.get("role", "user") == "user" and _content_texts(c)]
        return Reply(text="Echo: " + (" ".join(_content_texts(users[-1])) if users else ""))

    def _usage(self, data: dict[str, Any], reply: Reply, *, final: bool = True) -> dict[str, Any]:
        texts = [t for c in data["contents"] for t in _content_texts(c)]
        texts += _content_texts(data.get("systemInstruction") or {})
        prompt = sum(_words(t) for t in texts) + sum(
            1 for c in data["contents"] for p in c["parts"] if "inlineData" in p or "fileData" in p
        )
        usage: dict[str, Any] = {"promptTokenCount": prompt}
        candidates = _words(reply.text or "") + len(reply.function_calls) * 5
        candidates *= int((data.get("generationConfig") or {}).get("candidateCount") or 1)
        thoughts = _words(reply.thought or "")
        if final and candidates:
            usage["candidatesTokenCount"] = candidates
        usage["totalTokenCount"] = prompt + (candidates + thoughts if final else 0)
        if reply.cached_tokens:
            usage["cachedContentTokenCount"] = reply.cached_tokens
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if final and thoughts:
            usage["thoughtsTokenCount"] = thoughts
        return usage

    def _call_parts(self, reply: Reply, model: str, response_id: str) -> list[dict[str, Any]]:
        parts = []
        for number, (name, args) in enumerate(reply.function_calls):
            part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
            if number == 0 and model.startswith("gemini-3"):
                digest = hashlib.sha256(f"{response_id}:{name}".encode()).digest()
                signature = base64.b64encode(b"\x12\x0a" + digest).decode()
                with self._lock:
                    self.signatures.add(_base64_bytes(signature))
                part["thoughtSignature"] = signature
            parts.append(part)
        return parts

    def _events(self, data: dict[str, Any], model: str, reply: Reply, pieces: int) -> list[dict[str, Any]]:
        """The answer as the response objects of a stream (one object for ``generateContent``)."""
        response_id = self._next_id()
        head = {"modelVersion": model, "responseId": response_id}
        if reply.block_reason is not None:
            feedback = {"blockReason": reply.block_reason}
            return [{"promptFeedback": feedback, "usageMetadata": self._usage(data, Reply()), **head}]
        config = data.get("generationConfig") or {}
        include_thoughts = bool((config.get("thinkingConfig") or {}).get("includeThoughts"))
        steps: list[list[dict[str, Any]]] = []
        if reply.thought and include_thoughts:
            steps.append([{"text": reply.thought, "thought": True}])
        if reply.text:
            steps += [[{"text": piece}] for piece in split_reply(reply.text, pieces)]
        steps += [[part] for part in self._call_parts(reply, model, response_id)]
        if not steps:
            steps.append([])
        count = int(config.get("candidateCount") or 1)
        events = []
        for number, parts in enumerate(steps):
            last = number == len(steps) - 1
            candidates = []
            for index in range(count):
                candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}} if parts else {}
                if last:
                    candidate["finishReason"] = reply.finish_reason
                if index:
                    candidate["index"] = index
                candidates.append(candidate)
            events.append(
                {"candidates": candidates, "usageMetadata": self._usage(data, reply, final=last), **head}
            )
        return events

    async def _generate(
        self, request: web.Request, model: str, method: str, data: dict[str, Any]
    ) -> web.StreamResponse:
        problem = self._check_generate(data, model)
        if problem is not None:
            return problem
        reply = self._next_reply(data)
        if method == "generateContent":
            events = self._events(data, model, reply, 1)
            answer = events[0]
            if len(events) > 1:  # one response object holding every part
                answer = dict(events[-1])
                merged: list[list[dict[str, Any]]] = [[] for _ in answer["candidates"]]
                for event in events:
                    for index, candidate in enumerate(event["candidates"]):
                        merged[index] += candidate.get("content", {}).get("parts", [])
                answer["candidates"] = [
                    {**candidate, "content": {"parts": merged[index], "role": "model"}}
                    for index, candidate in enumerate(answer["candidates"])
                ]
            return web.Response(
                body=orjson.dumps(answer, option=orjson.OPT_INDENT_2),
                content_type="application/json",
                charset="UTF-8",
                headers=self._headers(),
            )
        events = self._events(data, model, reply, self.behaviour.chunks)
        if request.query.get("alt") == "sse":
            frames = [b"data: " + orjson.dumps(event) + b"\r\n\r\n" for event in events]
            if self.behaviour.broken_event is not None:
                frames[self.behaviour.broken_event] = broken_event(frames[self.behaviour.broken_event])
            return await self._stream(request, frames, "text/event-stream")
        pretty = [orjson.dumps(event, option=orjson.OPT_INDENT_2) for event in events]
        frames = [(b"[" if i == 0 else b"\n,\r\n") + body for i, body in enumerate(pretty)] + [b"]"]
        return await self._stream(request, frames, "application/json")

    async def _stream(
        self, request: web.Request, frames: list[bytes], content_type: str
    ) -> web.StreamResponse:
        behaviour = self.behaviour
        response = web.StreamResponse(headers=self._headers())
        response.content_type = content_type
        response.charset = "UTF-8"
        await response.prepare(request)
        for index, frame in enumerate(frames):
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
            if index == len(frames) - 1:
                # Counted before the last frame goes out: the client may be done once it has it.
                with self._lock:
                    self.completed_streams += 1
            try:
                await response.write(frame)
            except (ConnectionError, RuntimeError) as exc:
                raise _ClientGone from exc
        await response.write_eof()
        return response

    # --- countTokens, embeddings, models -------------------------------------------------------------

    async def _count_tokens(
        self, request: web.Request, model: str, method: str, data: dict[str, Any]
    ) -> web.StreamResponse:
        if "contents" in data and "generateContentRequest" in data:
            return _invalid(
                "* CountTokensRequest: contents and generate_content_request are mutually exclusive\n"
            )
        inner = data.get("generateContentRequest") or {"contents": data.get("contents")}
        problem = self._check_generate(inner, model, "CountTokensRequest.generate_content_request")
        if problem is not None:
            return problem
        total = self._usage(inner, Reply(), final=False)["promptTokenCount"]
        body = {"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]}
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=self._headers())

    async def _embed(
        self, request: web.Request, model: str, method: str, data: dict[str, Any]
    ) -> web.StreamResponse:
        batch = method == "batchEmbedContents"
        prefix = "BatchEmbedContentsRequest" if batch else "EmbedContentRequest"
        requests = data.get("requests") if batch else [data]
        if not requests:
            return _invalid(f"* {prefix}.requests: requests is not specified\n")
        vectors = []
        for i, item in enumerate(requests):
            at = f"{prefix}.requests[{i}]" if batch else prefix
            name = item.get("model")
            if batch or name is not None:
                if not isinstance(name, str) or not name.startswith("models/"):
                    return _invalid(f"* {at}.model: unexpected model name format\n")
                if name != f"models/{model}":
                    return _invalid(f"* {at}.model: the model must match the model of the request URL\n")
            texts = _content_texts(item.get("content") or {})
            if not texts or not all(texts):
                return _invalid(
                    f"* {at}.content.parts[0].data: required oneof field 'data' must have one initialized field\n"
                )
            dimensions = int(item.get("outputDimensionality") or EMBEDDING_MODELS[model])
            vectors.append({"values": embedding_for(" ".join(texts), dimensions)})
        body: dict[str, Any] = {"embeddings": vectors} if batch else {"embedding": vectors[0]}
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=self._headers())

    async def _list_models(self, request: web.Request, recorded: RecordedRequest) -> web.StreamResponse:
        models = [self._model(name) for name in (*CHAT_MODELS, *EMBEDDING_MODELS)]
        return web.Response(body=orjson.dumps({"models": models}), content_type="application/json")

    async def _get_model(self, request: web.Request, recorded: RecordedRequest) -> web.StreamResponse:
        name = request.match_info["target"]
        if name not in CHAT_MODELS and name not in EMBEDDING_MODELS:
            return _error(404, f"models/{name} is not found for API version {_version(request)}.")
        return web.Response(body=orjson.dumps(self._model(name)), content_type="application/json")

    @staticmethod
    def _model(name: str) -> dict[str, Any]:
        embedding = name in EMBEDDING_MODELS
        methods = ["embedContent", "batchEmbedContents"] if embedding else ["generateContent", "countTokens"]
        return {
            "name": f"models/{name}",
            "version": "001",
            "displayName": name,
            "inputTokenLimit": 2048 if embedding else 1_048_576,
            "outputTokenLimit": 1 if embedding else 65_536,
            "supportedGenerationMethods": methods,
        }


@contextlib.contextmanager
def fake_gemini(api_key: str = DEFAULT_API_KEY) -> Iterator[FakeGemini]:
    """Serve a :class:`FakeGemini` for the duration of the ``with`` block."""
    with FakeGemini(api_key) as fake:
        yield fake
