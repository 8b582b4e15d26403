"""Google's Gemini ``generateContent`` API, translated to and from the canonical OpenAI form.

The bodies are those of ``generativelanguage.googleapis.com`` (REST, camelCase JSON); Vertex AI's
Gemini endpoints take the same bodies, so nothing here knows a URL: the model and the method
(``:generateContent``, ``:streamGenerateContent?alt=sse``, ``:batchEmbedContents``) are the provider's
business. Pure functions over plain dicts, no I/O.

Choices made where the two APIs differ:

* ``system``/``developer`` messages, wherever they stand, become ``systemInstruction`` parts in order;
  the other messages become ``user``/``model`` contents, consecutive turns of one role merged.
* A ``tool`` message becomes a ``functionResponse`` part of a ``user`` turn; its function name is
  recovered from the earlier assistant tool call with that id (unknown id: 400). A JSON object result is
  sent as the response itself, anything else as ``{"output": text}``.
* Tools are declared with ``parametersJsonSchema`` and ``json_schema`` answers requested with
  ``responseJsonSchema``: the client's JSON Schema is passed on untouched instead of being cut down to
  Gemini's OpenAPI subset.
* Images: ``data:`` URLs become ``inlineData``; any other URL becomes ``fileData`` with the MIME type
  guessed from the file extension, or none when it has no known extension (the upstream then decides).
* Gemini names no tool calls: a call's id is ``call_`` + a hash of the response id and its position
  (or Gemini's own ``id`` when it sends one). A call's ``thoughtSignature`` (Gemini 3 rejects a history
  whose function calls lack it) rides in the id as ``<id>__thought__<signature>``, the convention
  LiteLLM uses, and is put back on the ``functionCall`` part when the call comes back in a history.
  ``extra_content.google.thought_signature`` on a tool call (Google's OpenAI-compatible form) is read too.
* ``reasoning_effort`` becomes ``thinkingConfig.thinkingBudget`` (see :data:`THINKING_BUDGETS`), which
  Gemini 2.5 and 3 models both accept; thought parts of an answer are not passed on.
* A stream that ends without a ``finishReason`` raises a 502 from :meth:`StreamDecoder.finish`
  (usage read so far is kept); an answer with neither candidates nor a block reason is a 502 too.
* Embeddings: Gemini reports no token counts for ``batchEmbedContents``; the caller passes an estimate
  (:func:`estimate_embedding_tokens`) unless the answer carries ``usageMetadata``.
"""

from __future__ import annotations

import base64
import hashlib
import math
import mimetypes
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import orjson

from gateway_core.embeddings import embeddings_answer
from gateway_core.errors import GatewayError, bad_request, upstream_error
from gateway_core.json_depth import HIGHEST_MAX_DEPTH, loads_embedded, nests_deeper_than
from gateway_core.types import Usage

__all__ = [
    "THINKING_BUDGETS",
    "StreamDecoder",
    "decode_chat_response",
    "decode_embeddings_response",
    "decode_error",
    "encode_chat_request",
    "encode_embeddings_request",
    "estimate_embedding_tokens",
]

#: Separates a tool call id from the Gemini thought signature it carries.
SIGNATURE_SEPARATOR = "__thought__"

#: ``reasoning_effort`` → ``thinkingConfig.thinkingBudget`` (tokens; 0 switches thinking off where the
#: model allows it).
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}

#: Gemini finish reasons that mean the answer was filtered.
_FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)

#: Canonical parameters with a direct ``generationConfig`` counterpart: name → (Gemini name, type).
_GENERATION_PARAMETERS: dict[str, tuple[str, type]] = {
    "temperature": ("temperature", float),
    "top_p": ("topP", float),
    "top_k": ("topK", int),
    "seed": ("seed", int),
    "presence_penalty": ("presencePenalty", float),
    "frequency_penalty": ("frequencyPenalty", float),
    "n": ("candidateCount", int),
    "max_tokens": ("maxOutputTokens", int),
    "max_completion_tokens": ("maxOutputTokens", int),
}

#: Parameters read elsewhere (the URL, the stream wrapper) or that do not change the answer.
_IGNORED_PARAMETERS = frozenset(
    {"model", "messages", "stream", "stream_options", "user", "metadata", "store", "safety_identifier",
     "prompt_cache_key"}
)  # fmt: skip

_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".heic": "image/heic",
    ".heif": "image/heif",
}
_API_KEY = re.compile(r"AIza[0-9A-Za-z_\-]{20,}")


# --- requests ---------------------------------------------------------------------------------------


def encode_chat_request(body: dict[str, Any], *, drop_params: bool = False) -> dict[str, Any]:
    """An OpenAI chat completions body as a ``generateContent`` body (the model goes in the URL).

    Raises a 400 :class:`GatewayError` for malformed input and, unless ``drop_params``, for parameters
    Gemini cannot honour (``logit_bias``, ``parallel_tool_calls: false``, non-function tools, ...).
    """
    system, contents = _encode_messages(body.get("messages"))
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    declarations: list[dict[str, Any]] = []
    tool_choice: Any = None
    for name, value in body.items():
        if value is None or name in _IGNORED_PARAMETERS:
            continue
        if name in _GENERATION_PARAMETERS:
            if name == "max_tokens" and body.get("max_completion_tokens") is not None:
                continue
            target, kind = _GENERATION_PARAMETERS[name]
            config[target] = _number(name, value, kind)
        elif name == "stop":
            config["stopSequences"] = _stop_sequences(value)
        elif name == "response_format":
            config.update(_response_format(value))
        elif name == "logprobs":
            if not isinstance(value, bool):
                raise bad_request("'logprobs' must be a boolean.", param="logprobs")
            if value:
                config["responseLogprobs"] = True
        elif name == "top_logprobs":
            config["logprobs"] = _number(name, value, int)
        elif name == "reasoning_effort":
            if not isinstance(value, str) or value not in THINKING_BUDGETS:
                raise bad_request(
                    f"Invalid value for 'reasoning_effort': {value!r}. Supported values are: "
                    + ", ".join(repr(v) for v in THINKING_BUDGETS)
                    + ".",
                    param="reasoning_effort",
                    code="invalid_value",
                )
            config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[value]}
        elif name == "tools":
            declarations += _tool_declarations(value, drop_params)
        elif name == "functions":
            declarations += [
                _declaration(item, f"functions[{i}]") for i, item in enumerate(_list(name, value))
            ]
        elif name in ("tool_choice", "function_call"):
            if name == "tool_choice" or tool_choice is None:
                tool_choice = value
        elif name == "parallel_tool_calls":
            if value is False:
                _unsupported(name, drop_params, "Gemini cannot be told to call one tool at a time.")
        elif name == "service_tier":
            if value not in ("auto", "default"):
                _unsupported(name, drop_params)
        elif name == "modalities":
            if value != ["text"]:
                _unsupported(name, drop_params, "Gemini answers this endpoint with text only.")
        else:
            _unsupported(name, drop_params)
    if "logprobs" in config and not config.get("responseLogprobs"):
        raise bad_request("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    if declarations:
        tool_config, declarations = _tool_config(tool_choice, declarations)
        request["tools"] = [{"functionDeclarations": declarations}]
        if tool_config:
            request["toolConfig"] = {"functionCallingConfig": tool_config}
    elif tool_choice not in (None, "auto", "none"):
        raise bad_request("'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice")
    if config:
        request["generationConfig"] = config
    return request


def _encode_messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System parts and ``user``/``model`` contents of the canonical ``messages``."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array.", param="messages")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"'{where}' must be an object.", param=where)
        role = message.get("role")
        if role in ("system", "developer"):
            system += [{"text": text} for text in _texts(message.get("content"), where) if text]
        elif role == "user":
            _append(contents, "user", _user_parts(message.get("content"), where))
        elif role == "assistant":
            _append(contents, "model", _assistant_parts(message, where, tool_names))
        elif role in ("tool", "function"):
            if role == "tool":
                call_id = message.get("tool_call_id")
                name = tool_names.get(call_id) if isinstance(call_id, str) else None
                if name is None:
                    raise bad_request(
                        f"'{where}.tool_call_id' ({call_id!r}) does not match a tool call of an earlier "
                        "assistant message.",
                        param=f"{where}.tool_call_id",
                    )
            else:
                name = message.get("name")
                if not isinstance(name, str) or not name:
                    raise bad_request(
                        f"'{where}.name' is required for a function message.", param=f"{where}.name"
                    )
            result = "".join(_texts(message.get("content"), where))
            _append(
                contents, "user", [{"functionResponse": {"name": name, "response": _tool_response(result)}}]
            )
        else:
            raise bad_request(
                f"Invalid value for '{where}.role': {role!r}. Supported values are: 'system', 'developer', "
                "'user', 'assistant' and 'tool'.",
                param=f"{where}.role",
                code="invalid_value",
            )
    if not contents:
        raise bad_request(
            "Gemini needs at least one user or assistant message besides the system messages.",
            param="messages",
        )
    return system, contents


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"] += parts
    else:
        contents.append({"role": role, "parts": parts})


def _texts(content: Any, where: str) -> list[str]:
    """The texts of a content that may hold only text (system, tool and assistant messages)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise bad_request(
            f"'{where}.content' must be a string or an array of parts.", param=f"{where}.content"
        )
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise bad_request(
                f"'{where}.content[{j}]' must be a text part in this message.", param=f"{where}.content[{j}]"
            )
    return texts


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request(
            f"'{where}.content' must be a string or an array of parts.", param=f"{where}.content"
        )
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise bad_request(f"'{at}.image_url.url' is required.", param=f"{at}.image_url.url")
            parts.append(_media_part(url, at, default_type=None))
        elif kind == "input_audio":
            audio = part.get("input_audio")
            data = audio.get("data") if isinstance(audio, dict) else None
            fmt = audio.get("format") if isinstance(audio, dict) else None
            if not isinstance(data, str) or not isinstance(fmt, str):
                raise bad_request(f"'{at}.input_audio' needs 'data' and 'format'.", param=f"{at}.input_audio")
            parts.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": data}})
        elif kind == "file":
            file = part.get("file") if isinstance(part.get("file"), dict) else {}
            data = file.get("file_data")
            if not isinstance(data, str) or not data:
                raise bad_request(
                    "Gemini takes files only as 'file_data' (a data: URL), not by 'file_id'.",
                    param=f"{at}.file",
                    code="unsupported_value",
                )
            filename = file.get("filename")
            guessed = mimetypes.guess_type(filename)[0] if isinstance(filename, str) else None
            if data.startswith("data:"):
                parts.append(_media_part(data, at, default_type=guessed))
            elif guessed:
                parts.append({"inlineData": {"mimeType": guessed, "data": data}})
            else:
                raise bad_request(f"The type of '{at}.file' cannot be determined.", param=f"{at}.file")
        else:
            raise bad_request(
                f"Unsupported content part type {kind!r} in '{at}' for Gemini.",
                param=f"{at}.type",
                code="unsupported_value",
            )
    return parts


def _media_part(url: str, where: str, *, default_type: str | None) -> dict[str, Any]:
    """``inlineData`` for a ``data:`` URL, ``fileData`` for any other URL."""
    if url.startswith("data:"):
        header, comma, payload = url[5:].partition(",")
        if not comma:
            raise bad_request(f"'{where}' holds a malformed data: URL.", param=where)
        declared, _, encoding = header.partition(";")
        if encoding.endswith("base64"):
            data = "".join(payload.split())
        else:
            data = base64.b64encode(unquote_to_bytes(payload)).decode()
        return {
            "inlineData": {"mimeType": declared or default_type or "application/octet-stream", "data": data}
        }
    path = urlsplit(url).path.lower()
    suffix = path[path.rfind(".") :] if "." in path.rsplit("/", 1)[-1] else ""
    mime_type = (
        _IMAGE_TYPES.get(suffix) or (mimetypes.guess_type(path)[0] if suffix else None) or default_type
    )
    file_data: dict[str, str] = {"fileUri": url}
    if mime_type:
        file_data["mimeType"] = mime_type
    return {"fileData": file_data}


def _assistant_parts(message: dict[str, Any], where: str, tool_names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": text} for text in _texts(message.get("content"), where) if text]
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise bad_request(f"'{where}.tool_calls' must be an array.", param=f"{where}.tool_calls")
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise bad_request(f"'{at}.function.name' is required.", param=f"{at}.function.name")
        name = function["name"]
        call_id = call.get("id")
        signature = None
        if isinstance(call_id, str):
            tool_names[call_id] = name
            signature = split_tool_call_id(call_id)[1]
        google = (call.get("extra_content") or {}).get("google") if isinstance(call, dict) else None
        if isinstance(google, dict) and isinstance(google.get("thought_signature"), str):
            signature = google["thought_signature"]
        part: dict[str, Any] = {
            "functionCall": {
                "name": name,
                "args": _arguments(function.get("arguments"), f"{at}.function.arguments"),
            }
        }
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    legacy = message.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("name"), str):
        args = _arguments(legacy.get("arguments"), f"{where}.function_call.arguments")
        parts.append({"functionCall": {"name": legacy["name"], "args": args}})
    return parts


def _arguments(arguments: Any, where: str) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = loads_embedded(arguments, where) if isinstance(arguments, str | bytes) else None
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise bad_request(f"'{where}' must be a JSON object.", param=where)
    return parsed


def _tool_response(result: str) -> dict[str, Any]:
    """A tool's result as ``functionResponse.response``: a JSON object as is, else ``{"output": ...}``."""
    if result.lstrip().startswith("{"):
        try:
            parsed = orjson.loads(result)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and not nests_deeper_than(parsed, HIGHEST_MAX_DEPTH):
            return parsed
    return {"output": result}


def _number(name: str, value: Any, kind: type) -> int | float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not float(value).is_integer())
    ):
        expected = "an integer" if kind is int else "a number"
        raise bad_request(f"'{name}' must be {expected}.", param=name)
    return int(value) if kind is int else value


def _list(name: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise bad_request(f"'{name}' must be an array.", param=name)
    return value


def _stop_sequences(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("'stop' must be a string or an array of strings.", param="stop")
    return stops


def _response_format(value: Any) -> dict[str, Any]:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise bad_request(
                "'response_format.json_schema' is required.", param="response_format.json_schema"
            )
        config: dict[str, Any] = {"responseMimeType": "application/json"}
        if isinstance(spec.get("schema"), dict):
            config["responseJsonSchema"] = spec["schema"]
        return config
    raise bad_request(
        f"Invalid value for 'response_format.type': {kind!r}. Supported values are: 'text', 'json_object' "
        "and 'json_schema'.",
        param="response_format.type",
        code="invalid_value",
    )


def _tool_declarations(tools: Any, drop_params: bool) -> list[dict[str, Any]]:
    declarations = []
    for i, tool in enumerate(_list("tools", tools)):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            _unsupported(f"tools[{i}]", drop_params, f"Gemini supports only function tools, not {kind!r}.")
            continue
        declarations.append(_declaration(tool.get("function"), f"tools[{i}].function"))
    return declarations


def _declaration(function: Any, where: str) -> dict[str, Any]:
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise bad_request(f"'{where}.name' is required.", param=f"{where}.name")
    declaration: dict[str, Any] = {"name": function["name"]}
    if isinstance(function.get("description"), str):
        declaration["description"] = function["description"]
    if isinstance(function.get("parameters"), dict):
        declaration["parametersJsonSchema"] = function["parameters"]
    return declaration


def _tool_config(
    choice: Any, declarations: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``functionCallingConfig`` for a ``tool_choice``, and the declarations it leaves callable."""
    if choice is None:
        return None, declarations
    if choice in ("auto", "none", "required"):
        return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}, declarations
    if isinstance(choice, dict):
        kind = choice.get("type")
        function = choice.get("function") if kind == "function" else choice if "name" in choice else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return {"mode": "ANY", "allowedFunctionNames": [function["name"]]}, declarations
        allowed = choice.get("allowed_tools") if kind == "allowed_tools" else None
        if isinstance(allowed, dict) and allowed.get("mode") in ("auto", "required"):
            names = [
                tool["function"]["name"]
                for tool in allowed.get("tools") or []
                if isinstance(tool, dict)
                and isinstance(tool.get("function"), dict)
                and "name" in tool["function"]
            ]
            kept = [d for d in declarations if d["name"] in names]
            if allowed["mode"] == "required":
                return {"mode": "ANY", "allowedFunctionNames": names}, kept
            return {"mode": "AUTO"}, kept
    raise bad_request(
        "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a named function.",
        param="tool_choice",
        code="invalid_value",
    )


def _unsupported(name: str, drop_params: bool, reason: str = "") -> None:
    if drop_params:
        return
    detail = f" {reason}" if reason else ""
    raise bad_request(
        f"The parameter '{name}' is not supported by Gemini.{detail} "
        "(An operator can set drop_params to drop such parameters instead.)",
        param=name,
        code="unsupported_parameter",
    )


# --- answers ----------------------------------------------------------------------------------------


def split_tool_call_id(call_id: str) -> tuple[str, str | None]:
    """A tool call id and the Gemini thought signature it carries, if any."""
    base, separator, signature = call_id.partition(SIGNATURE_SEPARATOR)
    return (base, signature) if separator and signature else (call_id, None)


def _tool_call(
    call: dict[str, Any], signature: Any, response_id: str, choice: int, number: int
) -> dict[str, Any]:
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        digest = hashlib.sha256(f"{response_id}:{choice}:{number}".encode()).hexdigest()
        call_id = "call_" + digest[:24]
    if isinstance(signature, str) and signature:
        call_id += SIGNATURE_SEPARATOR + signature
    args = call.get("args")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": str(call.get("name") or ""), "arguments": orjson.dumps(args or {}).decode()},
    }


def _finish_reason(reason: Any, tool_calls: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if tool_calls else "stop"


def _usage(metadata: Any) -> dict[str, Any] | None:
    """OpenAI ``usage`` from Gemini's ``usageMetadata`` (absent counts are zero in proto3 JSON)."""
    if not isinstance(metadata, dict):
        return None
    prompt = int(metadata.get("promptTokenCount") or 0) + int(metadata.get("toolUsePromptTokenCount") or 0)
    thoughts = int(metadata.get("thoughtsTokenCount") or 0)
    completion = int(metadata.get("candidatesTokenCount") or 0) + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(metadata.get("totalTokenCount") or prompt + completion),
        "prompt_tokens_details": {"cached_tokens": int(metadata.get("cachedContentTokenCount") or 0)},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def _logprobs(result: Any) -> dict[str, Any] | None:
    """OpenAI ``logprobs`` from a candidate's ``logprobsResult``."""
    if not isinstance(result, dict) or not isinstance(result.get("chosenCandidates"), list):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for position, chosen in enumerate(result["chosenCandidates"]):
        top = tops[position] if position < len(tops) and isinstance(tops[position], dict) else {}
        alternatives = top.get("candidates") or []
        content.append(
            {
                **_token_logprob(chosen),
                "top_logprobs": [_token_logprob(alternative) for alternative in alternatives],
            }
        )
    return {"content": content, "refusal": None}


def _token_logprob(candidate: dict[str, Any]) -> dict[str, Any]:
    token = str(candidate.get("token", ""))
    return {
        "token": token,
        "logprob": float(candidate.get("logProbability", 0.0)),
        "bytes": list(token.encode()),
    }


def _answer_parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of a candidate that belong in the answer (thoughts are left out)."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return []
    return [part for part in parts if isinstance(part, dict) and not part.get("thought")]


def _candidate_index(candidate: dict[str, Any], position: int) -> int:
    index = candidate.get("index")
    return index if isinstance(index, int) else position


def _block_reason(data: dict[str, Any]) -> str | None:
    feedback = data.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    return reason if isinstance(reason, str) and reason else None


def decode_chat_response(
    data: dict[str, Any], *, model: str, response_id: str | None = None
) -> dict[str, Any]:
    """A ``GenerateContentResponse`` as an OpenAI ``chat.completion``."""
    if response_id is None:
        upstream_id = data.get("responseId")
        response_id = f"chatcmpl-{upstream_id}" if isinstance(upstream_id, str) else _new_id()
    choices: list[dict[str, Any]] = []
    for position, candidate in enumerate(data.get("candidates") or []):
        index = _candidate_index(candidate, position)
        texts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        for part in _answer_parts(candidate):
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            if isinstance(part.get("functionCall"), dict):
                signature = part.get("thoughtSignature")
                tool_calls.append(
                    _tool_call(part["functionCall"], signature, response_id, index, len(tool_calls))
                )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts else None,
            "refusal": None,
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": _logprobs(candidate.get("logprobsResult")),
                "finish_reason": _finish_reason(candidate.get("finishReason"), bool(tool_calls)),
            }
        )
    if not choices:
        if _block_reason(data) is None:
            raise upstream_error("The upstream Gemini answer held no candidates.")
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": None},
                "logprobs": None,
                "finish_reason": "content_filter",
            }
        )
    choices.sort(key=lambda choice: choice["index"])
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(data.get("usageMetadata")) or _usage({}),
    }


def _new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


class _Choice:
    __slots__ = ("finished", "started", "tool_calls")

    def __init__(self) -> None:
        self.started = False
        self.finished = False
        self.tool_calls = 0


class StreamDecoder:
    """Turns the events of ``streamGenerateContent?alt=sse`` into canonical chunks.

    Each event is a whole ``GenerateContentResponse`` holding the next piece of each candidate. Per
    choice the chunks are: the role, the text deltas, one chunk per function call (Gemini sends calls
    whole: id, name and all arguments at once, with indexes counting up from 0) and exactly one
    ``finish_reason`` chunk. :meth:`finish` returns the usage chunk (empty ``choices``) built from the
    last ``usageMetadata`` seen, and raises a 502 when the stream ended before every choice finished.
    """

    def __init__(self, *, model: str, response_id: str, created: int | None = None) -> None:
        self.model = model
        self.response_id = response_id
        self.created = int(time.time()) if created is None else created
        self.usage: Usage | None = None
        self._usage: dict[str, Any] | None = None
        self._choices: dict[int, _Choice] = {}

    def feed(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The canonical chunks for one streamed ``GenerateContentResponse``."""
        chunks: list[dict[str, Any]] = []
        usage = _usage(data.get("usageMetadata"))
        if usage is not None:
            self._usage = usage
            self.usage = Usage.from_openai(usage)
        candidates = data.get("candidates") or []
        if not candidates and _block_reason(data) is not None:
            choice = self._choice(0, chunks)
            if not choice.finished:
                choice.finished = True
                chunks.append(self._chunk(0, {}, "content_filter"))
        for position, candidate in enumerate(candidates):
            index = _candidate_index(candidate, position)
            choice = self._choice(index, chunks)
            if choice.finished:
                continue
            logprobs = _logprobs(candidate.get("logprobsResult"))
            for part in _answer_parts(candidate):
                text = part.get("text")
                if isinstance(text, str) and text:
                    chunks.append(self._chunk(index, {"content": text}, logprobs=logprobs))
                    logprobs = None
                call = part.get("functionCall")
                if isinstance(call, dict):
                    tool_call = _tool_call(
                        call, part.get("thoughtSignature"), self.response_id, index, choice.tool_calls
                    )
                    chunks.append(
                        self._chunk(index, {"tool_calls": [{"index": choice.tool_calls, **tool_call}]})
                    )
                    choice.tool_calls += 1
            reason = candidate.get("finishReason")
            if reason:
                choice.finished = True
                chunks.append(self._chunk(index, {}, _finish_reason(reason, choice.tool_calls > 0)))
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        """The usage chunk, once the upstream stream is over (empty when it reported no usage)."""
        if not self._choices or not all(choice.finished for choice in self._choices.values()):
            raise upstream_error("The upstream Gemini stream ended before the answer was complete.")
        if self._usage is None:
            return []
        return [
            {
                "id": self.response_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self._usage,
            }
        ]

    def _choice(self, index: int, chunks: list[dict[str, Any]]) -> _Choice:
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice()
        if not choice.started:
            choice.started = True
            chunks.append(self._chunk(index, {"role": "assistant", "content": ""}))
        return choice

    def _chunk(
        self,
        index: int,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        *,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self.response_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            ],
        }


# --- embeddings -------------------------------------------------------------------------------------


def _embedding_inputs(body: dict[str, Any]) -> list[str]:
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise bad_request("'input' must be a non-empty string or array of strings.", param="input")
    if not all(isinstance(text, str) for text in texts):
        raise bad_request(
            "Gemini embeds text only: 'input' must be a string or an array of strings, not tokens.",
            param="input",
            code="unsupported_value",
        )
    if any(not text for text in texts):
        raise bad_request("'input' must not contain empty strings.", param="input")
    return texts


def encode_embeddings_request(
    body: dict[str, Any], *, model: str, drop_params: bool = False
) -> dict[str, Any]:
    """An OpenAI embeddings body as a ``batchEmbedContents`` body for ``model``."""
    texts = _embedding_inputs(body)
    name = model if "/" in model else f"models/{model}"
    extra: dict[str, Any] = {}
    for key, value in body.items():
        if value is None or key in ("model", "input", "user"):
            continue
        if key == "dimensions":
            extra["outputDimensionality"] = _number(key, value, int)
        elif key == "encoding_format":
            if value not in ("float", "base64"):
                raise bad_request(
                    f"Invalid value: {value!r}. Supported values are: 'float' and 'base64'.",
                    param="encoding_format",
                    code="invalid_value",
                )
        else:
            _unsupported(key, drop_params)
    return {"requests": [{"model": name, "content": {"parts": [{"text": text}]}, **extra} for text in texts]}


def estimate_embedding_tokens(body: dict[str, Any]) -> int:
    """A token count for an embeddings body Gemini does not count: one token per four characters."""
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return sum(math.ceil(len(text) / 4) for text in texts if isinstance(text, str))


def decode_embeddings_response(
    data: dict[str, Any], *, model: str, encoding_format: str | None, prompt_tokens: int = 0
) -> dict[str, Any]:
    """A ``batchEmbedContents`` (or ``embedContent``) answer as an OpenAI embeddings list.

    ``base64`` is the little-endian float32 encoding OpenAI uses. The usage is Gemini's
    ``usageMetadata.promptTokenCount`` when present, else ``prompt_tokens`` (the caller's estimate).
    """
    embeddings = data.get("embeddings")
    if embeddings is None and isinstance(data.get("embedding"), dict):
        embeddings = [data["embedding"]]
    if not isinstance(embeddings, list):
        raise upstream_error("The upstream Gemini embeddings answer held no embeddings.")
    vectors = []
    for embedding in embeddings:
        values = embedding.get("values") if isinstance(embedding, dict) else None
        if not isinstance(values, list):
            raise upstream_error("The upstream Gemini embeddings answer held a malformed embedding.")
        vectors.append(values)
    metadata = data.get("usageMetadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("promptTokenCount"), int):
        prompt_tokens = metadata["promptTokenCount"]
    return embeddings_answer(
        vectors, model=model, encoding_format=encoding_format, prompt_tokens=prompt_tokens
    )


# --- errors -----------------------------------------------------------------------------------------


def decode_error(status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
    """The client's error for a Gemini error answer ``{"error": {"code", "message", "status", "details"}}``.

    The client's own mistakes keep their 400 and Google's message; problems of the gateway's key,
    project or deployment (bad or missing key, permission, unknown model, unsupported region) are 502;
    quota exhaustion is 429 with ``Retry-After`` from ``RetryInfo.retryDelay``; an overloaded model is
    503, other server errors 502, an expired deadline 504.
    """
    error = _error_object(body)
    message = _redact(str(error.get("message") or "").strip())
    google_status = str(error.get("status") or "")
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    reasons = {str(d.get("reason")) for d in details if d.get("reason")}
    retry_after = _retry_after(details, headers)
    if status == 400 and ("API_KEY_INVALID" in reasons or "API key not valid" in message):
        return upstream_error(
            "The upstream provider Gemini rejected the gateway's API key.", code="upstream_auth_error"
        )
    if status == 400 and google_status == "FAILED_PRECONDITION":
        return upstream_error(
            f"The upstream provider Gemini cannot serve the gateway's project: {message}",
            code="upstream_precondition_failed",
        )
    if status in (400, 413):
        if "exceeds the maximum number of tokens" in message:
            return GatewayError(400, message, param="messages", code="context_length_exceeded")
        return GatewayError(
            status,
            message or f"The upstream provider Gemini rejected the request (status {status}).",
            code=google_status.lower() or None,
        )
    if status in (401, 403):
        return upstream_error(
            f"The upstream provider Gemini rejected the gateway's credentials (status {status}).",
            code="upstream_auth_error",
        )
    if status == 404:
        detail = f": {message}" if message else ""
        return upstream_error(
            f"The upstream provider Gemini does not know the deployment's model{detail}",
            code="upstream_model_not_found",
        )
    if status == 429:
        return GatewayError(
            429,
            message or "The upstream provider Gemini is rate limiting requests; retry later.",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"retry-after": retry_after} if retry_after else None,
        )
    if status in (408, 504):
        return upstream_error("The upstream provider Gemini timed out.", status=504, code="upstream_timeout")
    detail = f": {message}" if message else ""
    if status == 503:
        error_503 = upstream_error(
            f"The upstream provider Gemini is unavailable{detail}", status=503, code="upstream_unavailable"
        )
        if retry_after:
            error_503.headers["retry-after"] = retry_after
        return error_503
    return upstream_error(f"The upstream provider Gemini failed with status {status}{detail}")


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(data, list) and data:  # the non-SSE stream endpoint wraps its error in an array
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _retry_after(details: list[dict[str, Any]], headers: Mapping[str, str]) -> str | None:
    """Whole seconds from ``RetryInfo.retryDelay`` (a protobuf duration such as ``"17s"``)."""
    for detail in details:
        delay = detail.get("retryDelay")
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo") and isinstance(delay, str):
            try:
                return str(max(1, math.ceil(float(delay.removesuffix("s")))))
            except ValueError:
                break
    header = headers.get("retry-after") or headers.get("Retry-After")
    return header or None


def _redact(message: str) -> str:
    """Google's messages can quote the API key; never pass one on."""
    return _API_KEY.sub("[redacted]", message)
