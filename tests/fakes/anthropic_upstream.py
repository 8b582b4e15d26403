"""A fake Anthropic API on 127.0.0.1 that answers and validates like api.anthropic.com.

It serves ``POST /v1/messages`` (JSON or SSE stream) and ``POST /v1/messages/count_tokens`` from an
aiohttp server in a background thread with its own event loop, so synchronous and asynchronous tests
can both use it. Requests need an API key (``x-api-key``, or ``Authorization: Bearer`` as current
SDKs send it) and an ``anthropic-version`` header, and are validated strictly: unknown fields, missing
``max_tokens``, bad roles or content blocks, and ``tool_result`` blocks that do not answer the
``tool_use`` blocks of the previous assistant turn are 400s with Anthropic's error body.

By default the answer echoes the last user text (``"Echo: ..."``); when tools are given and that text
contains ``call tool``, the answer calls the tools named in the text (or the first tool) instead.
Tests script exact answers with :meth:`FakeAnthropic.enqueue` and inject faults with
:meth:`FakeAnthropic.behave`: error statuses with Anthropic error bodies (529 overloaded, 429 with
``retry-after``), an ``event: error`` in the middle of a stream, a connection dropped mid-stream.
Every request is recorded.

    with FakeAnthropic() as fake:
        fake.enqueue(Reply([tool_use_block("get_weather", {"city": "Paris"})], stop_reason="tool_use"))
        ...
        assert fake.requests[-1].json["max_tokens"] == 4096
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import split_reply
from tests.fakes.server import BackgroundServer, RecordedRequest, broken_event, echoed_headers

DEFAULT_API_KEY = "sk-ant-fake-upstream-7c2e9b4d1a3f5e60"
#: ``anthropic-version`` values: the documented 2023-01-01 and 2023-06-01, and the later dated versions
#: current SDKs send.
VERSION = re.compile(r"^20\d\d-\d\d-\d\d$")
FIRST_VERSION = "2023-01-01"

#: Top-level fields the real Messages API knows; anything else is "Extra inputs are not permitted".
MESSAGES_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature",
        "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier", "output_config",
        "cache_control", "container", "inference_geo", "speed", "diagnostics", "user_profile_id",
        "workspace_id",
    }
)  # fmt: skip
COUNT_TOKENS_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config", "cache_control",
     "speed", "user_profile_id", "workspace_id"}
)  # fmt: skip
TOOL_FIELDS = frozenset(
    {"name", "description", "input_schema", "cache_control", "strict", "type", "input_examples",
     "allowed_callers", "defer_loading", "eager_input_streaming"}
)  # fmt: skip
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
USER_BLOCKS = frozenset({"text", "image", "document", "tool_result", "search_result"})
ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})
#: Messages of role ``system`` (accepted inside ``messages`` by the current API) carry text only.
SYSTEM_BLOCKS = frozenset({"text"})
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_use_block(name: str, input: dict[str, Any], id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id or f"toolu_fake_{name}", "name": name, "input": input}


def thinking_block(thinking: str, signature: str = "sig_fake0001") -> dict[str, Any]:
    return {"type": "thinking", "thinking": thinking, "signature": signature}


@dataclass
class Reply:
    """One scripted answer: Anthropic content blocks and how the message stopped."""

    content: list[dict[str, Any]]
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    #: Replaces the counted usage fields (``input_tokens``, ``output_tokens``, cache counts).
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class Behaviour:
    """How the fake answers until the next :meth:`FakeAnthropic.behave` or :meth:`FakeAnthropic.reset`."""

    #: Answer every request with this status and an Anthropic error body (after the header checks).
    status: int | None = None
    error_type: str = "api_error"
    message: str = "Internal server error"
    #: Extra response headers (e.g. ``retry-after``) on every answer.
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: Pieces a streamed text or tool input is split into.
    chunks: int = 3
    #: Seconds between streamed events.
    chunk_interval: float = 0.0
    #: Stop the stream after this many events.
    die_after: int | None = None
    #: With ``die_after``: reset the TCP connection (True) or end the HTTP body cleanly (False).
    abrupt: bool = True
    #: Send ``event: error`` of this type after ``stream_error_after`` events, then end the stream.
    stream_error: str | None = None
    stream_error_message: str = "Overloaded"
    stream_error_after: int = 3
    #: With ``status``: append the request's headers (the key included) to the error message.
    echo_headers: bool = False
    #: With ``status``: answer the error to this many requests only, then normally (0: to every one).
    faults_for: int = 0
    #: Cut the ``data:`` of the stream event at this index in the middle (not valid JSON), then go on
    #: with the rest; with ``die_after`` one past it, the stream ends mid-event.
    broken_event: int | None = None
    #: Reported prompt cache reads and writes.
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


class _Invalid(Exception):
    """A request the real API would reject with 400 ``invalid_request_error``."""


class _ClientGone(Exception):
    pass


class _Died(Exception):
    pass


def _words(value: Any) -> int:
    """Tokens of the fake: whitespace-separated words of every text in a request or answer part."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(item) for item in value)
    if isinstance(value, dict):
        if value.get("type") == "image":
            return 1
        total = 0
        for key in ("text", "content", "thinking", "name"):
            if key in value:
                total += _words(value[key])
        if isinstance(value.get("input"), dict):
            total += _words(orjson.dumps(value["input"]).decode())
        return total
    return 0


def _sample(schema: Any) -> Any:
    """A deterministic value matching a (simple) JSON schema."""
    if not isinstance(schema, dict):
        return "test"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {name: _sample(sub) for name, sub in properties.items()}
    return {"integer": 1, "number": 1.5, "boolean": True, "array": [], "null": None}.get(str(kind), "test")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            block.get("text", "")
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def validate(data: dict[str, Any], *, count_tokens: bool = False) -> None:
    """Raise :class:`_Invalid` with the real API's message for what it would reject."""
    known = COUNT_TOKENS_FIELDS if count_tokens else MESSAGES_FIELDS
    for name in data:
        if name not in known:
            raise _Invalid(f"{name}: Extra inputs are not permitted")
    if "model" not in data:
        raise _Invalid("model: Field required")
    if not count_tokens:
        if "max_tokens" not in data:
            raise _Invalid("max_tokens: Field required")
        max_tokens = data["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            raise _Invalid("max_tokens: Input should be a valid integer")
        if max_tokens < 0:
            raise _Invalid("max_tokens: Input should be greater than or equal to 0")
    if "messages" not in data:
        raise _Invalid("messages: Field required")
    messages = data["messages"]
    if not isinstance(messages, list):
        raise _Invalid("messages: Input should be a valid list")
    if not messages:
        raise _Invalid("messages: at least one message is required")
    _validate_system(data.get("system"))
    tool_names = _validate_tools(data.get("tools"))
    _validate_tool_choice(data.get("tool_choice"), tool_names)
    for name, low, high in (("temperature", 0, 1), ("top_p", 0, 1)):
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Invalid(f"{name}: Input should be a valid number")
        if value < low:
            raise _Invalid(f"{name}: Input should be greater than or equal to {low}")
        if value > high:
            raise _Invalid(f"{name}: Input should be less than or equal to {high}")
    top_k = data.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise _Invalid("top_k: Input should be a valid non-negative integer")
    stop = data.get("stop_sequences")
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise _Invalid("stop_sequences: Input should be a valid list")
    metadata = data.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _Invalid("metadata: Input should be a valid dictionary")
        for key in metadata:
            if key != "user_id":
                raise _Invalid(f"metadata.{key}: Extra inputs are not permitted")
    if "stream" in data and not isinstance(data["stream"], bool):
        raise _Invalid("stream: Input should be a valid boolean")
    if data.get("service_tier") not in (None, "auto", "standard_only"):
        raise _Invalid("service_tier: Input should be 'auto' or 'standard_only'")
    _validate_output_config(data.get("output_config"))
    _validate_thinking(data.get("thinking"), data.get("max_tokens"))
    _validate_messages(messages)


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _Invalid("system: Input should be a valid string")
    for index, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _Invalid(f"system.{index}.type: Input should be 'text'")
        _validate_text(block, f"system.{index}")


def _validate_text(block: dict[str, Any], where: str) -> None:
    text = block.get("text")
    if not isinstance(text, str):
        raise _Invalid(f"{where}.text: Field required")
    if not text:
        raise _Invalid("messages: text content blocks must be non-empty")
    if not text.strip():
        raise _Invalid("messages: text content blocks must contain non-whitespace text")
    for key in block:
        if key not in ("type", "text", "cache_control", "citations"):
            raise _Invalid(f"{where}.{key}: Extra inputs are not permitted")


def _validate_tools(tools: Any) -> set[str]:
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise _Invalid("tools: Input should be a valid list")
    names: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"tools.{index}"
        if not isinstance(tool, dict):
            raise _Invalid(f"{where}: Input should be a valid dictionary")
        if tool.get("type") not in (None, "custom"):
            raise _Invalid(f"{where}.type: server tools are not available on this fake")
        for key in tool:
            if key not in TOOL_FIELDS:
                raise _Invalid(f"{where}.custom.{key}: Extra inputs are not permitted")
        name = tool.get("name")
        if not isinstance(name, str):
            raise _Invalid(f"{where}.custom.name: Field required")
        if not TOOL_NAME.match(name):
            raise _Invalid(f"{where}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _Invalid(f"{where}.custom.input_schema: Field required")
        if schema.get("type") != "object":
            raise _Invalid(f"{where}.custom.input_schema.type: Input should be 'object'")
        if "description" in tool and not isinstance(tool["description"], str):
            raise _Invalid(f"{where}.custom.description: Input should be a valid string")
        if name in names:
            raise _Invalid("tools: Tool names must be unique.")
        names.add(name)
    return names


def _validate_tool_choice(choice: Any, tool_names: set[str]) -> None:
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise _Invalid(
            "tool_choice: Input tag found using 'type' does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
        )
    assert isinstance(choice, dict)
    allowed = {"type"} if kind == "none" else {"type", "disable_parallel_tool_use"}
    if kind == "tool":
        allowed.add("name")
    for key in choice:
        if key not in allowed:
            raise _Invalid(f"tool_choice.{kind}.{key}: Extra inputs are not permitted")
    if not tool_names and kind != "none":
        raise _Invalid("tool_choice: tool_choice may only be specified while providing tools")
    if kind == "tool" and choice.get("name") not in tool_names:
        raise _Invalid(f"tool_choice.tool.name: Tool '{choice.get('name')}' not found in the provided tools")


def _validate_output_config(config: Any) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise _Invalid("output_config: Input should be a valid dictionary")
    for key, value in config.items():
        if key == "effort":
            if value not in (None, "low", "medium", "high", "xhigh", "max"):
                raise _Invalid(
                    "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
                )
        elif key == "format":
            if value is None:
                continue
            if (
                not isinstance(value, dict)
                or value.get("type") != "json_schema"
                or not isinstance(value.get("schema"), dict)
            ):
                raise _Invalid("output_config.format: Input should be a valid json_schema format")
            for extra in value:
                if extra not in ("type", "schema"):
                    raise _Invalid(f"output_config.format.{extra}: Extra inputs are not permitted")
        else:
            raise _Invalid(f"output_config.{key}: Extra inputs are not permitted")


def _validate_thinking(thinking: Any, max_tokens: Any) -> None:
    if thinking is None:
        return
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        assert isinstance(thinking, dict)
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            raise _Invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if isinstance(max_tokens, int) and budget >= max_tokens:
            raise _Invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
    elif kind not in ("adaptive", "disabled"):
        raise _Invalid(
            "thinking: Input tag found using 'type' does not match any of the expected tags: 'enabled', 'disabled', 'adaptive'"
        )


def _validate_block(block: Any, role: str, where: str) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _Invalid(f"{where}: Input should be a valid dictionary")
    kind = block["type"]
    allowed = {"user": USER_BLOCKS, "assistant": ASSISTANT_BLOCKS}.get(role, SYSTEM_BLOCKS)
    if kind not in allowed:
        tags = ", ".join(f"'{tag}'" for tag in sorted(allowed))
        raise _Invalid(
            f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected tags: {tags}"
        )
    if kind == "text":
        _validate_text(block, where)
    elif kind == "image":
        source = block.get("source")
        source_type = source.get("type") if isinstance(source, dict) else None
        if source_type == "base64":
            assert isinstance(source, dict)
            if source.get("media_type") not in IMAGE_MEDIA_TYPES:
                raise _Invalid(
                    f"{where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                )
            if not isinstance(source.get("data"), str) or not source["data"]:
                raise _Invalid(f"{where}.source.base64.data: Field required")
        elif source_type == "url":
            assert isinstance(source, dict)
            if not isinstance(source.get("url"), str) or not source["url"].startswith(
                ("http://", "https://")
            ):
                raise _Invalid(f"{where}.source.url.url: Input should be a valid URL")
        elif source_type != "file":
            raise _Invalid(
                f"{where}.source: Input tag found using 'type' does not match any of the expected tags: 'base64', 'url', 'file'"
            )
    elif kind == "document":
        source = block.get("source")
        if not isinstance(source, dict) or source.get("type") not in (
            "base64",
            "text",
            "url",
            "content",
            "file",
        ):
            raise _Invalid(f"{where}.source: Field required")
        if source.get("type") == "base64" and source.get("media_type") != "application/pdf":
            raise _Invalid(f"{where}.source.base64.media_type: Input should be 'application/pdf'")
    elif kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise _Invalid(f"{where}.tool_use.id: Field required")
        if not isinstance(block.get("input"), dict):
            raise _Invalid(f"{where}.tool_use.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise _Invalid(f"{where}.tool_result.tool_use_id: Field required")
        content = block.get("content")
        if isinstance(content, list):
            for index, item in enumerate(content):
                at = f"{where}.tool_result.content.{index}"
                if not isinstance(item, dict) or item.get("type") not in (
                    "text",
                    "image",
                    "document",
                    "search_result",
                ):
                    raise _Invalid(
                        f"{at}: Input tag found using 'type' does not match any of the expected tags"
                    )
                if item.get("type") == "text":
                    _validate_text(item, at)
        elif content is not None and not isinstance(content, str):
            raise _Invalid(f"{where}.tool_result.content: Input should be a valid string or list")
        if "is_error" in block and not isinstance(block["is_error"], bool):
            raise _Invalid(f"{where}.tool_result.is_error: Input should be a valid boolean")
    elif kind == "thinking" and not (
        isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str)
    ):
        raise _Invalid(f"{where}.thinking.signature: Field required")


def _validate_messages(messages: list[Any]) -> None:
    # Consecutive turns of one role are combined, as the API does, before the tool pairing is checked.
    turns: list[tuple[str, list[dict[str, Any]], int]] = []
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise _Invalid(f"{where}: Input should be a valid dictionary")
        for key in message:
            if key not in ("role", "content"):
                raise _Invalid(f"{where}.{key}: Extra inputs are not permitted")
        role = message.get("role")
        if role not in ("user", "assistant", "system"):
            raise _Invalid(f"{where}.role: Input should be 'user', 'assistant' or 'system'")
        if "content" not in message:
            raise _Invalid(f"{where}.content: Field required")
        content = message["content"]
        final_assistant = role == "assistant" and index == len(messages) - 1
        if isinstance(content, str):
            if not content and not final_assistant:
                raise _Invalid(
                    f"{where}: all messages must have non-empty content except for the optional final assistant message"
                )
            blocks = [text_block(content)] if content else []
        elif isinstance(content, list):
            if not content and not final_assistant:
                raise _Invalid(
                    f"{where}: all messages must have non-empty content except for the optional final assistant message"
                )
            for position, block in enumerate(content):
                _validate_block(block, role, f"{where}.content.{position}")
            blocks = list(content)
        else:
            raise _Invalid(f"{where}.content: Input should be a valid string or list")
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks, index))

    for position, (role, blocks, index) in enumerate(turns):
        previous = turns[position - 1] if position else None
        if role == "user":
            seen_other = False
            for block_index, block in enumerate(blocks):
                if block["type"] != "tool_result":
                    seen_other = True
                    continue
                if seen_other:
                    raise _Invalid(
                        f"messages.{index}: `tool_result` blocks must come first in a user message, before any other content"
                    )
                expected = {b["id"] for b in previous[1] if b["type"] == "tool_use"} if previous else set()
                if block["tool_use_id"] not in expected:
                    raise _Invalid(
                        f"messages.{index}.content.{block_index}: unexpected `tool_use_id` found in `tool_result` "
                        f"blocks: {block['tool_use_id']}. Each `tool_result` block must have a corresponding "
                        "`tool_use` block in the previous message."
                    )
        else:
            ids = [block["id"] for block in blocks if block["type"] == "tool_use"]
            following = turns[position + 1] if position + 1 < len(turns) else None
            if ids and following is not None:
                answered = {b["tool_use_id"] for b in following[1] if b["type"] == "tool_result"}
                missing = [tool_id for tool_id in ids if tool_id not in answered]
                if missing:
                    raise _Invalid(
                        f"messages.{following[2]}: `tool_use` ids were found without `tool_result` blocks "
                        f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                        "corresponding `tool_result` block in the next message."
                    )


def _error_body(error_type: str, message: str, request_id: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}
    )


def _frame(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"


class FakeAnthropic(BackgroundServer[RecordedRequest]):
    """The fake Anthropic API server; see the module docstring.

    ``url`` is the base URL as the ``anthropic`` SDK takes it (the SDK adds ``/v1/messages``).
    """

    name = "fake-anthropic"
    record_type = RecordedRequest
    reserve_port = True
    client_max_size = 32 * 1024 * 1024

    def __init__(self, api_key: str = DEFAULT_API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.behaviour = Behaviour()
        #: Requests whose caller went away before the answer was complete.
        self.aborted: list[RecordedRequest] = []
        #: Streams the fake sent to the end (``message_stop`` included).
        self.completed_streams = 0
        self._replies: deque[Reply] = deque()
        self._faulted = 0

    # --- control -------------------------------------------------------------------------------------

    def behave(self, **changes: Any) -> Behaviour:
        """Replace the behaviour: defaults plus ``changes``."""
        with self._lock:
            self.behaviour = Behaviour(**changes)
            self._faulted = 0
        return self.behaviour

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next valid ``/v1/messages`` requests with these replies, in order."""
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        """Back to normal answers, with no recorded requests and no scripted replies."""
        with self._lock:
            self.behaviour = Behaviour()
            self.requests.clear()
            self.aborted.clear()
            self._replies.clear()
            self.completed_streams = 0
            self._faulted = 0

    # --- request handling ----------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._guard(self._messages))
        app.router.add_post("/v1/messages/count_tokens", self._guard(self._count_tokens))

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}_fake{self._next_number():08d}"

    def _error(
        self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        request_id = self._next_id("req")
        return web.Response(
            status=status,
            body=_error_body(error_type, message, request_id),
            content_type="application/json",
            headers={"request-id": request_id, **(headers or {})},
        )

    def _guard(self, handler: Callable[[web.Request, dict[str, Any]], Any]) -> Callable[[web.Request], Any]:
        """Record the request, check the headers, apply injected faults, validate, then run ``handler``."""

        async def handle(request: web.Request) -> web.StreamResponse:
            recorded = await self._record(request)
            behaviour = self.behaviour
            try:
                if behaviour.delay:
                    await asyncio.sleep(behaviour.delay)
                # The API takes the key in x-api-key; current SDKs send it as a Bearer token instead.
                key = request.headers.get("x-api-key")
                scheme, _, token = request.headers.get("authorization", "").partition(" ")
                if not key and scheme.lower() == "bearer":
                    key = token.strip()
                if not key:
                    return self._error(401, "authentication_error", "x-api-key header is required")
                if key != self.api_key:
                    return self._error(401, "authentication_error", "invalid x-api-key")
                version = request.headers.get("anthropic-version")
                if not version:
                    return self._error(400, "invalid_request_error", "anthropic-version: header is required")
                if not VERSION.match(version) or version < FIRST_VERSION:
                    return self._error(
                        400, "invalid_request_error", f"anthropic-version: invalid version {version!r}"
                    )
                if behaviour.status is not None and behaviour.faults_for:
                    with self._lock:
                        self._faulted += 1
                        if self._faulted > behaviour.faults_for:
                            behaviour = Behaviour()
                if behaviour.status is not None:
                    message = behaviour.message
                    if behaviour.echo_headers:
                        message = echoed_headers(message, request)
                    return self._error(behaviour.status, behaviour.error_type, message, behaviour.headers)
                try:
                    data = orjson.loads(recorded.body)
                except orjson.JSONDecodeError:
                    return self._error(
                        400, "invalid_request_error", "There was an issue with the JSON body of your request."
                    )
                if not isinstance(data, dict):
                    return self._error(400, "invalid_request_error", "Input should be a valid dictionary")
                try:
                    validate(data, count_tokens=request.path.endswith("/count_tokens"))
                except _Invalid as exc:
                    return self._error(400, "invalid_request_error", str(exc))
                model = data["model"]
                if not isinstance(model, str) or not model.startswith("claude-"):
                    return self._error(404, "not_found_error", f"model: {model}")
                response: web.StreamResponse = await handler(request, data)
                return response
            except _Died:
                raise asyncio.CancelledError from None
            except (asyncio.CancelledError, _ClientGone):
                with self._lock:
                    self.aborted.append(recorded)
                raise asyncio.CancelledError from None

        return handle

    def _headers(self) -> dict[str, str]:
        return {
            "request-id": self._next_id("req"),
            "anthropic-organization-id": "00000000-0000-4000-8000-000000000000",
            **self.behaviour.headers,
        }

    async def _count_tokens(self, request: web.Request, data: dict[str, Any]) -> web.StreamResponse:
        tokens = _words(data.get("system")) + _words(data["messages"]) + _words(data.get("tools") or [])
        return web.Response(
            body=orjson.dumps({"input_tokens": tokens}),
            content_type="application/json",
            headers=self._headers(),
        )

    def _default_reply(self, data: dict[str, Any]) -> Reply:
        messages = data["messages"]
        last = messages[-1]
        if last["role"] == "user":
            content = last["content"]
            text = _text_of(content)
            results = (
                [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
                if isinstance(content, list)
                else []
            )
        else:
            text, results = "", []
        tools = data.get("tools") or []
        blocks: list[dict[str, Any]] = []
        thinking = data.get("thinking") or {}
        if thinking.get("type") in ("enabled", "adaptive"):
            blocks.append(thinking_block("Let me think about that."))
        if tools and "call tool" in text and (data.get("tool_choice") or {}).get("type") != "none":
            chosen = [tool for tool in tools if tool["name"] in text] or tools[:1]
            for position, tool in enumerate(chosen):
                blocks.append(
                    tool_use_block(
                        tool["name"],
                        _sample(tool["input_schema"]),
                        f"toolu_fake{position:02d}_{tool['name']}",
                    )
                )
            return Reply(blocks, stop_reason="tool_use")
        choice = data.get("tool_choice") or {}
        if choice.get("type") in ("any", "tool") and tools:
            tool = next((t for t in tools if t["name"] == choice.get("name")), tools[0])
            blocks.append(
                tool_use_block(tool["name"], _sample(tool["input_schema"]), f"toolu_fake00_{tool['name']}")
            )
            return Reply(blocks, stop_reason="tool_use")
        output_format = (data.get("output_config") or {}).get("format")
        if output_format:
            blocks.append(text_block(orjson.dumps(_sample(output_format["schema"])).decode()))
            return Reply(blocks)
        if results:
            reply = "Tool result: " + " | ".join(_text_of(r.get("content")) for r in results)
        else:
            reply = "Echo: " + text
        stop_reason, stop_sequence = "end_turn", None
        for sequence in data.get("stop_sequences") or []:
            if sequence and sequence in reply:
                reply, stop_reason, stop_sequence = reply[: reply.index(sequence)], "stop_sequence", sequence
        words = reply.split(" ")
        if len(reply.split()) > data["max_tokens"]:
            reply, stop_reason, stop_sequence = " ".join(words[: data["max_tokens"]]), "max_tokens", None
        if reply:
            blocks.append(text_block(reply))
        return Reply(blocks, stop_reason=stop_reason, stop_sequence=stop_sequence)

    async def _messages(self, request: web.Request, data: dict[str, Any]) -> web.StreamResponse:
        with self._lock:
            reply = self._replies.popleft() if self._replies else None
        if reply is None:
            reply = self._default_reply(data)
        behaviour = self.behaviour
        usage: dict[str, Any] = {
            "input_tokens": _words(data.get("system")) + _words(data["messages"]),
            "cache_creation_input_tokens": behaviour.cache_creation_input_tokens,
            "cache_read_input_tokens": behaviour.cache_read_input_tokens,
            "output_tokens": max(1, _words(reply.content)),
        }
        usage.update(reply.usage)
        message = {
            "id": self._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": data["model"],
            "content": reply.content,
            "stop_reason": reply.stop_reason,
            "stop_sequence": reply.stop_sequence,
            "usage": {
                **usage,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": usage["cache_creation_input_tokens"],
                    "ephemeral_1h_input_tokens": 0,
                },
                "service_tier": "standard",
            },
        }
        if data.get("stream") is not True:
            return web.Response(
                body=orjson.dumps(message), content_type="application/json", headers=self._headers()
            )
        return await self._stream(request, message)

    def _events(self, message: dict[str, Any]) -> list[bytes]:
        chunks = self.behaviour.chunks
        usage = message["usage"]
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        }
        events = [_frame("message_start", {"type": "message_start", "message": start})]
        for index, block in enumerate(message["content"]):
            kind = block["type"]
            if kind == "text":
                opening: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [
                    {"type": "text_delta", "text": piece} for piece in split_reply(block["text"], chunks)
                ]
            elif kind == "tool_use":
                opening = {**block, "input": {}}
                arguments = orjson.dumps(block["input"]).decode() if block["input"] else ""
                pieces = [""] + (split_reply(arguments, chunks) if arguments else [])
                deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
            elif kind == "thinking":
                opening = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [
                    {"type": "thinking_delta", "thinking": piece}
                    for piece in split_reply(block["thinking"], chunks)
                ]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            else:
                opening, deltas = block, []
            events.append(
                _frame(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": opening},
                )
            )
            if index == 0:
                events.append(_frame("ping", {"type": "ping"}))
            events += [
                _frame("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                for delta in deltas
            ]
            events.append(_frame("content_block_stop", {"type": "content_block_stop", "index": index}))
        if not message["content"]:
            events.append(_frame("ping", {"type": "ping"}))
        final_usage = {
            key: usage[key]
            for key in (
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "output_tokens",
            )
        }
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
        events.append(
            _frame("message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage})
        )
        events.append(_frame("message_stop", {"type": "message_stop"}))
        return events

    async def _stream(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        behaviour = self.behaviour
        events = self._events(message)
        if behaviour.stream_error is not None:
            failure = _frame(
                "error",
                {
                    "type": "error",
                    "error": {"type": behaviour.stream_error, "message": behaviour.stream_error_message},
                },
            )
            events = [*events[: behaviour.stream_error_after], failure]
        if behaviour.broken_event is not None:
            events[behaviour.broken_event] = broken_event(events[behaviour.broken_event])
        response = web.StreamResponse(headers={**self._headers(), "cache-control": "no-cache"})
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
            if index == len(events) - 1 and behaviour.stream_error is None:
                # Counted before the last event goes out: the client may be done once it has it.
                with self._lock:
                    self.completed_streams += 1
            try:
                await response.write(event)
            except (ConnectionError, RuntimeError) as exc:
                raise _ClientGone from exc
        await response.write_eof()
        return response


@contextlib.contextmanager
def fake_anthropic(api_key: str = DEFAULT_API_KEY) -> Iterator[FakeAnthropic]:
    """Serve a :class:`FakeAnthropic` for the duration of the ``with`` block."""
    with FakeAnthropic(api_key) as fake:
        yield fake


__all__ = [
    "DEFAULT_API_KEY",
    "Behaviour",
    "FakeAnthropic",
    "Reply",
    "fake_anthropic",
    "text_block",
    "thinking_block",
    "tool_use_block",
    "validate",
]
