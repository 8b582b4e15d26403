"""Anthropic's Messages API translated to and from the canonical OpenAI chat form.

Towards an Anthropic upstream: :func:`encode_chat_request`, :func:`decode_chat_response`,
:class:`StreamDecoder` and :func:`decode_error`. From an Anthropic client (the gateway's
``/v1/messages``): :func:`decode_messages_request`, :func:`encode_messages_response`,
:class:`MessagesStreamEncoder` and :func:`encode_error`. Everything is plain dicts and bytes, no I/O.

Choices where the two APIs do not line up:

* System and developer messages, wherever they stand in the conversation, are hoisted in order into
  Anthropic's top-level ``system`` (a string when there is one plain text, otherwise text blocks).
  Consecutive messages of the same role are merged into one turn; the ``tool`` messages answering an
  assistant's ``tool_calls`` become ``tool_result`` blocks of one user turn, ahead of any user text.
  The OpenAI ``name`` of a message has no equivalent and is dropped.
* ``temperature`` above 1 (OpenAI allows up to 2, Anthropic 1) is a 400 naming ``temperature``; with
  ``drop_params`` it is dropped, so Anthropic's default of 1.0, the nearest valid value, applies.
  ``top_k`` is accepted as an extension parameter and passed on. Whether a model accepts sampling
  parameters at all is the upstream's call: newer models reject some of them with their own 400.
* ``response_format`` ``json_schema`` becomes Anthropic's structured output
  (``output_config.format`` of type ``json_schema``): the answer is JSON text in ``content``, exactly as
  OpenAI returns it. ``json_object`` has no Anthropic equivalent (the structured output needs a schema
  closed with ``additionalProperties: false``): it is a 400, or dropped with ``drop_params``.
* ``reasoning_effort`` ``low``/``medium``/``high``/``xhigh``/``max`` becomes ``output_config.effort``;
  ``none`` and ``minimal`` have no equivalent. ``service_tier`` ``auto`` stays ``auto`` and ``default``
  becomes ``standard_only``.
* ``n`` > 1, ``logprobs``, ``top_logprobs``, non-zero ``presence_penalty``/``frequency_penalty``,
  ``seed``, ``logit_bias``, audio, predictions, legacy ``functions`` and any parameter this module does
  not know are a 400 naming the parameter, or dropped with ``drop_params``. Parameters that do not
  change the answer (``stream_options``, ``metadata``, ``store: false``, ``prompt_cache_key``) are
  ignored: Anthropic streams always report usage.
* Answers: the upstream message id is kept as the completion id. ``thinking`` blocks are exposed as
  the ``reasoning_content`` extension of the message (and of stream deltas), as DeepSeek, vLLM and
  LiteLLM do; ``redacted_thinking`` blocks and signatures are dropped. ``pause_turn`` maps to
  ``stop`` and ``model_context_window_exceeded`` to ``length``. ``prompt_tokens`` counts every input
  token (uncached, cache reads and cache writes); ``cached_tokens`` are the cache reads.
* From Anthropic clients: ``max_tokens`` is required; ``top_k`` is kept as an extension parameter;
  ``thinking`` of type ``disabled`` is accepted, other thinking modes are a 400 (the canonical form
  cannot carry thinking blocks and their signatures back); ``cache_control`` hints are dropped;
  ``thinking`` blocks of earlier assistant turns are dropped; a ``tool_result`` becomes a ``tool``
  message whose content is the text of its blocks joined by newlines, prefixed with ``Error: `` when
  ``is_error`` is set (images in tool results are a 400). Streams always ask for usage.
* To Anthropic clients: ``stop`` becomes ``end_turn`` (OpenAI does not say whether a stop sequence
  matched, so ``stop_sequence`` stays null), ``length`` ``max_tokens``, ``tool_calls`` ``tool_use`` and
  ``content_filter`` ``refusal``. ``reasoning_content`` is not turned into ``thinking`` blocks (they
  would lack the signature Anthropic requires when they are sent back). ``input_tokens`` excludes the
  cached tokens, reported as ``cache_read_input_tokens``; cache writes are unknown and reported as 0.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway_core.errors import GatewayError, upstream_error
from gateway_core.http import error_from_upstream
from gateway_core.json_depth import loads_embedded
from gateway_core.types import Usage

__all__ = [
    "MessagesStreamEncoder",
    "StreamDecoder",
    "decode_chat_response",
    "decode_error",
    "decode_messages_request",
    "decode_stream_error",
    "encode_chat_request",
    "encode_error",
    "encode_messages_response",
    "messages_essentials",
    "openai_usage",
]

#: The ``anthropic-version`` header value the gateway sends upstream.
ANTHROPIC_VERSION = "2023-06-01"

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_DATA_URL = re.compile(
    r"^data:(?P<media_type>[\w.+-]+/[\w.+-]+)(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S
)

# --- towards an Anthropic upstream ------------------------------------------------------------------

#: OpenAI parameters with no Anthropic equivalent, each with the test for "set to a value that matters".
_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "n": lambda value: value not in (None, 1),
    "logprobs": lambda value: value not in (None, False),
    "top_logprobs": lambda value: value not in (None, 0),
    "presence_penalty": lambda value: value not in (None, 0),
    "frequency_penalty": lambda value: value not in (None, 0),
    "seed": lambda value: value is not None,
    "logit_bias": lambda value: bool(value),
    "audio": lambda value: value is not None,
    "modalities": lambda value: value not in (None, ["text"]),
    "prediction": lambda value: value is not None,
    "web_search_options": lambda value: value is not None,
    "functions": lambda value: bool(value),
    "function_call": lambda value: value is not None,
    "verbosity": lambda value: value is not None,
    "store": lambda value: bool(value),
}

#: OpenAI parameters that do not change the answer and have no Anthropic field.
_IGNORED = frozenset({"stream_options", "metadata", "prompt_cache_key"})

_HANDLED = frozenset(
    {
        "model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "top_k", "stop", "user", "safety_identifier", "tools", "tool_choice", "parallel_tool_calls",
        "response_format", "reasoning_effort", "service_tier",
    }
)  # fmt: skip

_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})
_SERVICE_TIERS = {"auto": "auto", "default": "standard_only"}

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: The HTTP status Anthropic uses for each error type (for ``error`` events inside a 200 stream).
_STATUS_OF_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _unsupported(name: str, message: str | None = None) -> GatewayError:
    return GatewayError(
        400,
        message or f"The parameter `{name}` is not supported by Anthropic models.",
        param=name,
        code="unsupported_parameter",
    )


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, param=param, code="invalid_value")


def encode_chat_request(
    body: Mapping[str, Any], *, model: str, drop_params: bool = False, default_max_tokens: int = 4096
) -> dict[str, Any]:
    """Translate a canonical OpenAI chat request into an Anthropic ``/v1/messages`` body.

    Raises a 400 :class:`GatewayError` naming the parameter for what Anthropic cannot express,
    unless ``drop_params`` is set, in which case such a parameter is left out.
    """

    def refuse(error: GatewayError) -> None:
        if not drop_params:
            raise error

    for name, value in body.items():
        if name in _HANDLED or name in _IGNORED:
            continue
        matters = _UNSUPPORTED.get(name)
        if matters is None or matters(value):
            refuse(_unsupported(name))

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("`messages` must be a non-empty array.", "messages")
    system, turns = _encode_messages(messages)

    out: dict[str, Any] = {
        "model": model,
        "max_tokens": _max_tokens(body, default_max_tokens),
        "messages": turns,
    }
    if system:
        out["system"] = system

    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or isinstance(temperature, bool) or temperature < 0:
            raise _invalid("`temperature` must be a number between 0 and 2.", "temperature")
        if temperature > 1:
            refuse(
                _invalid(
                    f"Anthropic models accept a `temperature` between 0 and 1; got {temperature}.",
                    "temperature",
                )
            )
        else:
            out["temperature"] = temperature
    for name in ("top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]

    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        if stop:
            out["stop_sequences"] = list(stop)
    elif stop is not None:
        raise _invalid("`stop` must be a string or an array of strings.", "stop")

    user = body.get("safety_identifier") or body.get("user")
    if user is not None:
        out["metadata"] = {"user_id": str(user)}

    tools, tool_choice = _encode_tools(body, refuse)
    if tools:
        out["tools"] = tools
    if tool_choice is not None:
        out["tool_choice"] = tool_choice

    output_config: dict[str, Any] = {}
    output_format = _encode_response_format(body.get("response_format"), refuse)
    if output_format is not None:
        output_config["format"] = output_format
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort in _EFFORTS:
            output_config["effort"] = effort
        else:
            refuse(
                _unsupported(
                    "reasoning_effort",
                    f"Anthropic models have no `reasoning_effort` of {effort!r}; "
                    "use one of low, medium, high, xhigh or max.",
                )
            )
    if output_config:
        out["output_config"] = output_config

    service_tier = body.get("service_tier")
    if service_tier is not None:
        if service_tier in _SERVICE_TIERS:
            out["service_tier"] = _SERVICE_TIERS[service_tier]
        else:
            refuse(_unsupported("service_tier", f"Anthropic has no `service_tier` of {service_tier!r}."))

    stream = body.get("stream")
    if stream is not None:
        out["stream"] = bool(stream)
    return out


def _max_tokens(body: Mapping[str, Any], default: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _invalid(f"`{name}` must be a positive integer.", name)
        return value
    return default


def _encode_messages(messages: list[Any]) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    #: Tool calls of the last assistant message still waiting for their ``tool`` message.
    awaiting: dict[str, str] = {}

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    def check_answered(index: int) -> None:
        if awaiting:
            raise _invalid(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to "
                f"each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                f"{', '.join(awaiting)}",
                f"messages[{index}].role",
            )

    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"`messages[{index}]` must be an object.", f"messages[{index}]")
        role = message.get("role")
        content = message.get("content")
        where = f"messages[{index}]"
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in awaiting:
                raise _invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceding "
                    "message with 'tool_calls'.",
                    f"{where}.tool_call_id",
                )
            del awaiting[call_id]
            add("user", [_tool_result(call_id, content, where)])
            continue
        check_answered(index)
        if role in ("system", "developer"):
            system.extend(_text_blocks(content, f"{where}.content"))
        elif role == "user":
            blocks = _user_blocks(content, f"{where}.content")
            if not blocks:
                raise _invalid(
                    f"{where}: all messages must have non-empty content except for the optional final "
                    "assistant message.",
                    f"{where}.content",
                )
            add("user", blocks)
        elif role == "assistant":
            if message.get("function_call") is not None:
                raise _unsupported(
                    f"{where}.function_call", "Legacy `function_call` messages are not supported."
                )
            blocks = _text_blocks(content, f"{where}.content", allow_refusal=True)
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise _invalid("`tool_calls` must be an array.", f"{where}.tool_calls")
            for position, call in enumerate(calls):
                block = _tool_use(call, f"{where}.tool_calls[{position}]")
                awaiting[block["id"]] = block["name"]
                blocks.append(block)
            if blocks:
                add("assistant", blocks)
        else:
            raise _invalid(
                f"Invalid value: {role!r}. Supported roles are 'system', 'developer', 'user', 'assistant' "
                "and 'tool'.",
                f"{where}.role",
            )
    check_answered(len(messages))

    for turn in turns:
        blocks = turn["content"]
        if turn["role"] == "user" and any(block["type"] == "tool_result" for block in blocks):
            # Anthropic wants the tool results first in their user turn, any text after them.
            blocks.sort(key=lambda block: block["type"] != "tool_result")
        if len(blocks) == 1 and blocks[0].keys() == {"type", "text"}:
            turn["content"] = blocks[0]["text"]
    if not turns:
        raise _invalid("`messages` must contain at least one user or assistant message.", "messages")
    if len(system) == 1 and system[0].keys() == {"type", "text"}:
        return system[0]["text"], turns
    return system, turns


def _text_block(text: str, part: Mapping[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if part.get("cache_control") is not None:
        block["cache_control"] = part["cache_control"]
    return block


def _text_blocks(content: Any, where: str, *, allow_refusal: bool = False) -> list[dict[str, Any]]:
    """The text blocks of a system, developer or assistant message (empty texts left out)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _invalid("`content` must be a string or an array of content parts.", where)
    blocks = []
    for position, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" or (allow_refusal and kind == "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise _invalid(f"A `{kind}` content part needs a string `{kind}`.", f"{where}[{position}]")
            if text:
                blocks.append(_text_block(text, part))
        else:
            raise _invalid(
                f"Content parts of type {kind!r} are not allowed here.", f"{where}[{position}].type"
            )
    return blocks


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _invalid("`content` must be a string or an array of content parts.", where)
    blocks = []
    for position, part in enumerate(content):
        at = f"{where}[{position}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _invalid("A `text` content part needs a string `text`.", at)
            if text:
                blocks.append(_text_block(text, part))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise _invalid("An `image_url` content part needs an `image_url.url`.", f"{at}.image_url")
            block = {"type": "image", "source": _image_source(url, f"{at}.image_url.url")}
            if part.get("cache_control") is not None:
                block["cache_control"] = part["cache_control"]
            blocks.append(block)
        elif kind == "file":
            blocks.append(_document(part.get("file"), f"{at}.file"))
        elif kind == "input_audio":
            raise _unsupported(at, "Anthropic models do not accept audio input.")
        else:
            raise _invalid(f"Unknown content part type {kind!r}.", f"{at}.type")
    return blocks


def _image_source(url: str, where: str) -> dict[str, Any]:
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if match is None:
            raise _invalid("Image data URLs must be base64 encoded (data:<type>;base64,<data>).", where)
        media_type = match["media_type"].lower()
        if media_type not in IMAGE_MEDIA_TYPES:
            raise _invalid(
                "Anthropic models accept image/jpeg, image/png, image/gif and image/webp images, "
                f"not {media_type}.",
                where,
            )
        return {"type": "base64", "media_type": media_type, "data": match["data"]}
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise _invalid("Image URLs must be http(s) URLs or base64 data URLs.", where)


def _document(file: Any, where: str) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    match = _DATA_URL.match(data_url) if isinstance(data_url, str) else None
    if match is None or match["media_type"].lower() != "application/pdf":
        raise _unsupported(
            where, "Only PDF files given inline as base64 `file_data` can be sent to Anthropic models."
        )
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": match["data"]},
    }
    filename = file.get("filename") if isinstance(file, dict) else None
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or call.get("type", "function") != "function":
        raise _invalid("Tool calls must be of type `function` with a `function` object.", where)
    call_id, name = call.get("id"), function.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise _invalid("A tool call needs an `id` and a `function.name`.", where)
    arguments = function.get("arguments")
    if arguments in (None, ""):
        parsed: Any = {}
    else:
        try:
            parsed = (
                loads_embedded(arguments, f"{where}.function.arguments")
                if isinstance(arguments, str | bytes)
                else None
            )
        except orjson.JSONDecodeError:
            parsed = None
    if not isinstance(parsed, dict):
        raise _invalid(
            "The `arguments` of a tool call must be a JSON object encoded as a string.",
            f"{where}.function.arguments",
        )
    return {"type": "tool_use", "id": call_id, "name": name, "input": parsed}


def _tool_result(call_id: str, content: Any, where: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif isinstance(content, list):
        texts = _text_blocks(content, f"{where}.content")
        if texts:
            block["content"] = texts
    elif content is not None:
        raise _invalid("`content` must be a string or an array of text parts.", f"{where}.content")
    return block


def _encode_tools(
    body: Mapping[str, Any], refuse: Callable[[GatewayError], None]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    raw_tools = body.get("tools") or []
    if not isinstance(raw_tools, list):
        raise _invalid("`tools` must be an array.", "tools")
    tools: list[dict[str, Any]] = []
    for index, tool in enumerate(raw_tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            refuse(
                _unsupported(
                    f"tools[{index}]", f"Tools of type {kind!r} are not supported by Anthropic models."
                )
            )
            continue
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid("A function tool needs a `name`.", f"tools[{index}].function.name")
        schema = function.get("parameters")
        encoded: dict[str, Any] = {
            "name": name,
            "input_schema": schema if isinstance(schema, dict) else {"type": "object", "properties": {}},
        }
        if function.get("description"):
            encoded["description"] = function["description"]
        if function.get("strict") is True:
            encoded["strict"] = True
        if tool.get("cache_control") is not None:
            encoded["cache_control"] = tool["cache_control"]
        tools.append(encoded)

    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    names = {tool["name"] for tool in tools}
    encoded_choice: dict[str, Any] | None
    if choice is None:
        encoded_choice = None
    elif choice == "auto":
        encoded_choice = {"type": "auto"}
    elif choice == "none":
        encoded_choice = {"type": "none"}
    elif choice == "required":
        encoded_choice = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in names:
            raise _invalid(
                f"`tool_choice` names the function {name!r}, which is not in `tools`.", "tool_choice"
            )
        encoded_choice = {"type": "tool", "name": name}
    else:
        raise _invalid("`tool_choice` must be 'auto', 'none', 'required' or a named function.", "tool_choice")
    if not tools:
        if encoded_choice is not None and encoded_choice["type"] in ("any", "tool"):
            raise _invalid("`tool_choice` requires `tools`.", "tool_choice")
        return [], None
    if parallel is False:
        if encoded_choice is None:
            encoded_choice = {"type": "auto"}
        if encoded_choice["type"] != "none":
            encoded_choice["disable_parallel_tool_use"] = True
    return tools, encoded_choice


def _encode_response_format(value: Any, refuse: Callable[[GatewayError], None]) -> dict[str, Any] | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _invalid(
                "`response_format.json_schema.schema` must be a JSON schema object.", "response_format"
            )
        return {"type": "json_schema", "schema": schema}
    if kind == "json_object":
        refuse(
            _unsupported(
                "response_format",
                "Anthropic models have no JSON mode without a schema: use a `response_format` of type "
                "`json_schema`.",
            )
        )
        return None
    raise _invalid(f"Unknown `response_format` type {kind!r}.", "response_format")


def openai_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic's ``usage`` in OpenAI's terms; cache writes as ``cache_write_tokens``."""
    uncached = int(usage.get("input_tokens") or 0)
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    details = usage.get("output_tokens_details")
    reasoning = int(details.get("thinking_tokens") or 0) if isinstance(details, Mapping) else 0
    prompt = uncached + cache_read + cache_write
    prompt_details: dict[str, int] = {"cached_tokens": cache_read}
    if cache_write:
        prompt_details["cache_write_tokens"] = cache_write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def _arguments(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


def decode_chat_response(
    data: Mapping[str, Any], *, model: str, created: int | None = None
) -> dict[str, Any]:
    """Translate an Anthropic message into an OpenAI ``chat.completion``."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": _arguments(block.get("input"))},
                }
            )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    stop_reason = data.get("stop_reason")
    return {
        "id": data.get("id") or f"msg_{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _FINISH_REASONS.get(stop_reason or "end_turn", "stop"),
            }
        ],
        "usage": openai_usage(data.get("usage") or {}),
    }


class StreamDecoder:
    """Turns Anthropic stream events, in order, into canonical ``chat.completion.chunk`` dicts.

    Tool calls get the OpenAI ``index`` 0..n-1 in the order their ``tool_use`` blocks start. The
    finish reason comes in one chunk at the first ``message_delta`` that carries a stop reason, the
    usage chunk (empty ``choices``) at ``message_stop``. An ``error`` event raises
    :class:`GatewayError`. :attr:`usage` holds the counts known so far (input tokens from
    ``message_start``, final counts from ``message_delta``), so a stream cut short is still accounted;
    :attr:`done` tells whether ``message_stop`` arrived.
    """

    def __init__(self, *, model: str, created: int | None = None) -> None:
        self.model = model
        self.created = created if created is not None else int(time.time())
        self.id = f"msg_{uuid.uuid4().hex}"
        self.usage: Usage | None = None
        self.done = False
        self._anthropic_usage: dict[str, Any] = {}
        #: Anthropic block index -> OpenAI tool call index, for ``tool_use`` blocks.
        self._tool_index: dict[int, int] = {}
        self._tool_has_arguments: dict[int, bool] = {}
        self._finished = False
        self._started = False

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def _tool_delta(self, index: int, **fields: Any) -> dict[str, Any]:
        return self._chunk({"tool_calls": [{"index": index, **fields}]})

    def feed(self, event: str | None, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = event or data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = message.get("id") or self.id
            self._merge_usage(message.get("usage"))
            self._started = True
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "content_block_stop":
            index = data.get("index")
            if isinstance(index, int) and index in self._tool_index and not self._tool_has_arguments[index]:
                self._tool_has_arguments[index] = True
                return [self._tool_delta(self._tool_index[index], function={"arguments": "{}"})]
            return []
        if kind == "message_delta":
            self._merge_usage(data.get("usage"))
            stop_reason = (data.get("delta") or {}).get("stop_reason")
            if stop_reason and not self._finished:
                self._finished = True
                return [self._chunk({}, _FINISH_REASONS.get(stop_reason, "stop"))]
            return []
        if kind == "message_stop":
            self.done = True
            usage = openai_usage(self._anthropic_usage)
            self.usage = Usage.from_openai(usage)
            out: list[dict[str, Any]] = []
            if not self._finished:
                self._finished = True
                out.append(self._chunk({}, "stop"))
            chunk = self._chunk({})
            chunk["choices"] = []
            chunk["usage"] = usage
            out.append(chunk)
            return out
        if kind == "error":
            raise decode_stream_error(data)
        return []  # ping and event types added later

    def _merge_usage(self, usage: Any) -> None:
        """Take the cumulative counts of ``message_start``/``message_delta``; keep :attr:`usage` current."""
        if isinstance(usage, Mapping):
            self._anthropic_usage.update({key: value for key, value in usage.items() if value is not None})
            self.usage = Usage.from_openai(openai_usage(self._anthropic_usage))

    def _block_start(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block") or {}
        index = data.get("index")
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if kind == "thinking" and block.get("thinking"):
            return [self._chunk({"reasoning_content": block["thinking"]})]
        if kind == "tool_use" and isinstance(index, int):
            position = len(self._tool_index)
            self._tool_index[index] = position
            initial = block.get("input")
            arguments = _arguments(initial) if initial else ""
            self._tool_has_arguments[index] = bool(arguments)
            return [
                self._tool_delta(
                    position,
                    id=block.get("id"),
                    type="function",
                    function={"name": block.get("name"), "arguments": arguments},
                )
            ]
        return []

    def _block_delta(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if kind == "input_json_delta":
            index = data.get("index")
            partial = delta.get("partial_json")
            if isinstance(index, int) and index in self._tool_index and partial:
                self._tool_has_arguments[index] = True
                return [self._tool_delta(self._tool_index[index], function={"arguments": partial})]
        return []  # signature_delta, citations_delta


def decode_stream_error(data: Mapping[str, Any], *, provider: str = "anthropic") -> GatewayError:
    """The client's error for an ``error`` event inside a 200 stream, read as the answer of the status
    Anthropic uses for its type."""
    error = data.get("error")
    error = error if isinstance(error, dict) else {}
    status = _STATUS_OF_ERROR_TYPE.get(str(error.get("type") or "api_error"), 500)
    return decode_error(status, orjson.dumps({"type": "error", "error": error}), provider=provider)


def decode_error(
    status: int, body: bytes, headers: Mapping[str, str] | None = None, *, provider: str = "anthropic"
) -> GatewayError:
    """Turn an Anthropic error answer (``{"type": "error", "error": {...}}``) into the client's error.

    A 400 keeps its status and upstream message, 413 stays 413 and 429 keeps ``retry-after``;
    credential problems (401, 403) and an unknown model (404) are the gateway's and become 502, as do
    other server errors; 504 stays a timeout; an overloaded upstream (529) is a 503 with code
    ``overloaded``.
    """
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    error_type = None
    try:
        payload = orjson.loads(body)
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            error_type = payload["error"].get("type")
    except orjson.JSONDecodeError:
        pass
    if status == 529 or error_type == "overloaded_error":
        retry = {"retry-after": lowered["retry-after"]} if "retry-after" in lowered else None
        return GatewayError(
            503,
            f"The upstream provider {provider!r} is temporarily overloaded; retry later.",
            type="server_error",
            code="overloaded",
            headers=retry,
        )
    return error_from_upstream(status, body, lowered, provider)


# --- from an Anthropic client ------------------------------------------------------------------------

_MESSAGES_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature",
        "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier", "output_config",
        "cache_control",
    }
)  # fmt: skip

#: Fields of Anthropic's API the gateway cannot translate.
_MESSAGES_UNSUPPORTED = frozenset(
    {
        "container", "mcp_servers", "context_management", "inference_geo", "speed", "diagnostics",
        "user_profile_id", "workspace_id",
    }
)  # fmt: skip

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def _request_error(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param)


def _field_required(where: str) -> GatewayError:
    return _request_error(f"{where}: Field required", where)


def messages_essentials(body: Mapping[str, Any]) -> dict[str, Any]:
    """Check what every ``/v1/messages`` request needs, whatever answers it; return the canonical
    skeleton (model, max_tokens, stream) of a request that may go to an Anthropic upstream untranslated.

    Fields only a translation cares about (unknown or untranslatable ones, such as ``thinking``) are
    left to :func:`decode_messages_request` or, on a native pass-through, to the upstream.
    """
    model = body.get("model")
    if model is None:
        raise _field_required("model")
    if not isinstance(model, str) or not model:
        raise _request_error("model: Input should be a valid string", "model")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _field_required("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise _request_error("max_tokens: Input should be a valid non-negative integer", "max_tokens")
    messages = body.get("messages")
    if messages is None:
        raise _field_required("messages")
    if not isinstance(messages, list):
        raise _request_error("messages: Input should be a valid list", "messages")
    if not messages:
        raise _request_error("messages: at least one message is required", "messages")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _request_error("stream: Input should be a valid boolean", "stream")
    skeleton: dict[str, Any] = {"model": model, "messages": [], "max_tokens": max_tokens}
    if stream:
        skeleton["stream"] = True
        skeleton["stream_options"] = {"include_usage": True}
    return skeleton


def decode_messages_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an Anthropic ``/v1/messages`` request like Anthropic does; return the canonical body."""
    for name in body:
        if name in _MESSAGES_UNSUPPORTED:
            raise _request_error(f"{name}: This field is not supported by this gateway.", name)
        if name not in _MESSAGES_FIELDS:
            raise _request_error(f"{name}: Extra inputs are not permitted", name)
    skeleton = messages_essentials(body)
    model, max_tokens, messages = skeleton["model"], skeleton["max_tokens"], body["messages"]

    out: dict[str, Any] = {"model": model, "messages": [*_decode_system(body.get("system"))]}
    for index, message in enumerate(messages):
        out["messages"].extend(_decode_message(message, f"messages.{index}"))
    out["max_tokens"] = max_tokens

    for name in ("temperature", "top_p", "top_k"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _request_error(f"{name}: Input should be a valid number", name)
        if name == "temperature" and not 0 <= value <= 1:
            raise _request_error("temperature: Input should be between 0 and 1", name)
        out[name] = value

    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(item, str) for item in stop):
            raise _request_error("stop_sequences: Input should be a valid list of strings", "stop_sequences")
        if stop:
            out["stop"] = list(stop)

    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _request_error("metadata: Input should be a valid dictionary", "metadata")
        for key in metadata:
            if key != "user_id":
                raise _request_error(f"metadata.{key}: Extra inputs are not permitted", f"metadata.{key}")
        if metadata.get("user_id") is not None:
            out["user"] = str(metadata["user_id"])

    tools = body.get("tools")
    if tools is not None:
        out["tools"] = _decode_tools(tools)
    choice = body.get("tool_choice")
    if choice is not None:
        out.update(_decode_tool_choice(choice))

    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind != "disabled":
            raise _request_error(
                "thinking: Extended thinking is not supported by this gateway for this model.", "thinking"
            )

    service_tier = body.get("service_tier")
    if service_tier is not None:
        if service_tier not in ("auto", "standard_only"):
            raise _request_error("service_tier: Input should be 'auto' or 'standard_only'", "service_tier")
        out["service_tier"] = "auto" if service_tier == "auto" else "default"

    output_config = body.get("output_config")
    if output_config is not None:
        out.update(_decode_output_config(output_config))

    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise _request_error("stream: Input should be a valid boolean", "stream")
        out["stream"] = stream
        if stream:
            out["stream_options"] = {"include_usage": True}
    return out


def _decode_system(system: Any, where: str = "system") -> list[dict[str, Any]]:
    """The top-level ``system``, or a ``system`` message inside ``messages``: text only in both."""
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise _request_error(f"{where}: Input should be a valid string or list of text blocks", where)
    parts = []
    for index, block in enumerate(system):
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or not isinstance(block.get("text"), str)
        ):
            raise _request_error(f"{where}.{index}: Input should be a text block", f"{where}.{index}")
        parts.append({"type": "text", "text": block["text"]})
    return [{"role": "system", "content": parts}] if parts else []


def _decode_message(message: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        raise _request_error(f"{where}: Input should be a valid dictionary", where)
    for key in message:
        if key not in ("role", "content"):
            raise _request_error(f"{where}.{key}: Extra inputs are not permitted", f"{where}.{key}")
    role = message.get("role")
    if role not in ("user", "assistant", "system"):
        raise _request_error(
            f"{where}.role: Input should be 'user', 'assistant' or 'system'", f"{where}.role"
        )
    if "content" not in message:
        raise _field_required(f"{where}.content")
    content = message["content"]
    if role == "system":  # accepted inside ``messages`` by the current API
        return _decode_system(content, f"{where}.content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _request_error(f"{where}.content: Input should be a valid string or list", f"{where}.content")
    if not content:
        raise _request_error(f"{where}.content: List should have at least 1 item", f"{where}.content")
    for index, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _request_error(
                f"{where}.content.{index}: Input should be a content block", f"{where}.content.{index}"
            )
    if role == "assistant":
        return [_decode_assistant(content, where)]
    return _decode_user(content, where)


def _decode_assistant(content: list[dict[str, Any]], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at = f"{where}.content.{index}"
        kind = block["type"]
        if kind == "text":
            texts.append(_string(block, "text", at))
        elif kind == "tool_use":
            call_id, name = _string(block, "id", at), _string(block, "name", at)
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise _request_error(f"{at}.input: Input should be a valid dictionary", f"{at}.input")
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": _arguments(arguments)},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _request_error(
                f"{at}.type: Content blocks of type '{kind}' are not supported here", f"{at}.type"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _decode_user(content: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at = f"{where}.content.{index}"
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": _string(block, "text", at)})
        elif kind == "image":
            parts.append(
                {"type": "image_url", "image_url": {"url": _image_url(block.get("source"), f"{at}.source")}}
            )
        elif kind == "document":
            parts.append(_file_part(block, at))
        elif kind == "tool_result":
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": _string(block, "tool_use_id", at),
                    "content": _tool_result_text(block, at),
                }
            )
        else:
            raise _request_error(
                f"{at}.type: Content blocks of type '{kind}' are not supported here", f"{at}.type"
            )
    if parts:
        results.append({"role": "user", "content": parts})
    return results


def _string(block: Mapping[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if value is None:
        raise _field_required(f"{where}.{key}")
    if not isinstance(value, str):
        raise _request_error(f"{where}.{key}: Input should be a valid string", f"{where}.{key}")
    return value


def _image_url(source: Any, where: str) -> str:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media_type = source.get("media_type")
        if media_type not in IMAGE_MEDIA_TYPES:
            raise _request_error(
                f"{where}.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'",
                f"{where}.media_type",
            )
        return f"data:{media_type};base64,{_string(source, 'data', where)}"
    if kind == "url":
        return _string(source, "url", where)
    raise _request_error(f"{where}: Only base64 and url image sources are supported by this gateway", where)


def _file_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and source is not None and source.get("media_type") == "application/pdf":
        title = block.get("title")
        return {
            "type": "file",
            "file": {
                "filename": title if isinstance(title, str) and title else "document.pdf",
                "file_data": f"data:application/pdf;base64,{_string(source, 'data', f'{where}.source')}",
            },
        }
    if kind == "text" and source is not None:
        return {"type": "text", "text": _string(source, "data", f"{where}.source")}
    raise _request_error(
        f"{where}.source: Only base64 PDF and plain text documents are supported by this gateway",
        f"{where}.source",
    )


def _tool_result_text(block: Mapping[str, Any], where: str) -> str:
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for index, item in enumerate(content):
            at = f"{where}.content.{index}"
            if not isinstance(item, dict) or item.get("type") != "text":
                kind = item.get("type") if isinstance(item, dict) else None
                raise _request_error(
                    f"{at}.type: Tool results of type '{kind}' are not supported by this gateway",
                    f"{at}.type",
                )
            texts.append(_string(item, "text", at))
        text = "\n".join(texts)
    else:
        raise _request_error(f"{where}.content: Input should be a valid string or list", f"{where}.content")
    return f"Error: {text}" if block.get("is_error") is True else text


def _decode_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _request_error("tools: Input should be a valid list", "tools")
    out = []
    for index, tool in enumerate(tools):
        where = f"tools.{index}"
        if not isinstance(tool, dict):
            raise _request_error(f"{where}: Input should be a valid dictionary", where)
        if tool.get("type") not in (None, "custom"):
            raise _request_error(
                f"{where}: Server tools of type '{tool['type']}' are not supported by this gateway", where
            )
        name = _string(tool, "name", where)
        schema = tool.get("input_schema")
        if schema is None:
            raise _field_required(f"{where}.input_schema")
        if not isinstance(schema, dict):
            raise _request_error(
                f"{where}.input_schema: Input should be a valid dictionary", f"{where}.input_schema"
            )
        function: dict[str, Any] = {"name": name}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = schema
        if tool.get("strict") is True:
            function["strict"] = True
        out.append({"type": "function", "function": function})
    return out


def _decode_tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    out: dict[str, Any]
    if kind == "auto":
        out = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        out = {"tool_choice": "none"}
    elif kind == "tool":
        assert isinstance(choice, dict)
        out = {
            "tool_choice": {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}
        }
    else:
        raise _request_error(
            "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'", "tool_choice"
        )
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def _decode_output_config(config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise _request_error("output_config: Input should be a valid dictionary", "output_config")
    out: dict[str, Any] = {}
    for key, value in config.items():
        if value is None:
            continue
        if key == "effort":
            if value not in _EFFORTS:
                raise _request_error(
                    "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'",
                    "output_config.effort",
                )
            out["reasoning_effort"] = value
        elif key == "format":
            schema = value.get("schema") if isinstance(value, dict) else None
            if (
                not isinstance(value, dict)
                or value.get("type") != "json_schema"
                or not isinstance(schema, dict)
            ):
                raise _request_error(
                    "output_config.format: Input should be a json_schema format with a schema",
                    "output_config.format",
                )
            out["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": schema, "strict": True},
            }
        else:
            raise _request_error(
                f"output_config.{key}: Extra inputs are not permitted", f"output_config.{key}"
            )
    return out


def _message_id(completion_id: Any) -> str:
    if isinstance(completion_id, str) and completion_id:
        if completion_id.startswith("msg_"):
            return completion_id
        return "msg_" + completion_id.removeprefix("chatcmpl-")
    return f"msg_{uuid.uuid4().hex}"


def _anthropic_usage(usage: Any) -> dict[str, int]:
    parsed = Usage.from_openai(usage) or Usage()
    return {
        "input_tokens": max(parsed.prompt_tokens - parsed.cached_tokens, 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": parsed.cached_tokens,
        "output_tokens": parsed.completion_tokens,
    }


def encode_messages_response(resp: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """Translate a canonical ``chat.completion`` into an Anthropic message.

    Tool call arguments that are not a JSON object cannot be expressed as a ``tool_use`` input: they
    are a 502, the upstream's fault.
    """
    choices = resp.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):  # some OpenAI-compatible servers answer with content parts
        text = "".join(part.get("text") or "" for part in text if isinstance(part, dict))
    refusal = message.get("refusal")
    if text:
        content.append({"type": "text", "text": text})
    if refusal and not text:
        content.append({"type": "text", "text": refusal})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise upstream_error(
                "The upstream provider returned tool call arguments that are not a JSON object."
            )
        content.append(
            {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": parsed}
        )
    finish = choice.get("finish_reason")
    stop_reason = "refusal" if refusal else _STOP_REASONS.get(finish or "stop", "end_turn")
    return {
        "id": _message_id(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _anthropic_usage(resp.get("usage")),
    }


def frame(name: str, payload: Mapping[str, Any]) -> bytes:
    """One Anthropic SSE event: ``event: name`` and its JSON ``data``."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class MessagesStreamEncoder:
    """Turns canonical chunks into Anthropic SSE events, framed as Anthropic does.

    The sequence is ``message_start``, then for each content block ``content_block_start``, deltas
    and ``content_block_stop`` (a ``ping`` follows the first block start, as Anthropic sends it),
    then ``message_delta`` with the stop reason and usage, and ``message_stop``. The message ends
    when both the finish reason and the usage chunk have arrived, or at :meth:`finish`.
    """

    def __init__(self, *, model: str, message_id: str) -> None:
        self.model = model
        self.message_id = message_id
        self._started = False
        self._pinged = False
        self._ended = False
        self._blocks = 0
        #: Kind of the open block: "text", or the OpenAI index of the tool call it carries.
        self._open: str | int | None = None
        #: OpenAI tool call index -> Anthropic block index.
        self._tool_blocks: dict[int, int] = {}
        self._stop_reason: str | None = None
        self._refused = False
        self._usage: Any = None

    def feed(self, chunk: Mapping[str, Any]) -> list[bytes]:
        if self._ended:
            return []
        out = self._start()
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            for key in ("content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    out += self._text(text)
                    self._refused = self._refused or key == "refusal"
            for call in delta.get("tool_calls") or []:
                out += self._tool_call(call)
            finish = choice.get("finish_reason")
            if finish:
                self._stop_reason = "refusal" if self._refused else _STOP_REASONS.get(finish, "end_turn")
                out += self._close()
        if self._stop_reason is not None and self._usage is not None:
            out += self._end()
        return out

    def finish(self) -> list[bytes]:
        """End the message if the chunks did not: close blocks, ``message_delta``, ``message_stop``."""
        if self._ended:
            return []
        return self._start() + self._end()

    def error(self, err: GatewayError) -> bytes:
        """An Anthropic ``error`` event; the SDKs raise it as an API error."""
        self._ended = True
        return frame(
            "error", {"type": "error", "error": {"type": anthropic_error_type(err), "message": err.message}}
        )

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        }
        return [frame("message_start", {"type": "message_start", "message": message})]

    def _ping(self) -> list[bytes]:
        if self._pinged:
            return []
        self._pinged = True
        return [frame("ping", {"type": "ping"})]

    def _open_block(self, kind: str | int, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self._open = kind
        index = self._blocks
        self._blocks += 1
        out.append(
            frame(
                "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
            )
        )
        return out + self._ping()

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [frame("content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})]

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return frame("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def _text(self, text: str) -> list[bytes]:
        out = [] if self._open == "text" else self._open_block("text", {"type": "text", "text": ""})
        out.append(self._delta(self._blocks - 1, {"type": "text_delta", "text": text}))
        return out

    def _tool_call(self, call: Mapping[str, Any]) -> list[bytes]:
        position = call.get("index", 0)
        function = call.get("function") or {}
        out: list[bytes] = []
        if position not in self._tool_blocks:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._open_block(position, block)
            self._tool_blocks[position] = self._blocks - 1
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # Deltas for an earlier call after a later one started (never sent by OpenAI) still go to
            # their own block index, which is how Anthropic's SDKs accumulate them.
            out.append(
                self._delta(
                    self._tool_blocks[position], {"type": "input_json_delta", "partial_json": arguments}
                )
            )
        return out

    def _end(self) -> list[bytes]:
        self._ended = True
        out = self._close() + self._ping()
        delta = {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None}
        out.append(
            frame(
                "message_delta",
                {"type": "message_delta", "delta": delta, "usage": _anthropic_usage(self._usage)},
            )
        )
        out.append(frame("message_stop", {"type": "message_stop"}))
        return out


def anthropic_error_type(err: GatewayError) -> str:
    """Anthropic's error ``type`` for a gateway error, from its status."""
    status = err.status
    if status == 529 or (status == 503 and err.code == "overloaded"):
        return "overloaded_error"
    known = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        504: "timeout_error",
    }
    if status in known:
        return known[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def encode_error(err: GatewayError, *, request_id: str | None = None) -> bytes:
    """The Anthropic error body for ``err``; ``request_id`` is included when given, as Anthropic does."""
    body: dict[str, Any] = {
        "type": "error",
        "error": {"type": anthropic_error_type(err), "message": err.message},
    }
    if request_id is not None:
        body["request_id"] = request_id
    return orjson.dumps(body)
