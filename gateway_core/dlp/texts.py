"""Every text a body carries, per dialect, as places that can be read and rewritten.

A route that takes model input must say how its texts are found: :data:`REQUEST_TEXTS` maps each
(dialect, endpoint) to its walker, and a pair with no walker is refused by the DLP engine (503) rather
than passed through unfiltered. Answers have their walkers too (:data:`RESPONSE_TEXTS`).

Tool-call arguments are JSON in a string: when they parse, the strings inside are the texts (so an
escaped value is still seen and the rewritten arguments stay valid JSON); when they do not, the whole
string is one text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(slots=True)
class Texts:
    """The texts of one body: ``(container, key)`` places holding a string."""

    places: list[tuple[Any, Any]] = field(default_factory=list)
    #: Strings holding JSON that was parsed into places: (container, key, parsed, first, end) where
    #: ``places[first:end]`` lie inside ``parsed``; re-encoded when one of them changed.
    documents: list[tuple[Any, Any, Any, int, int]] = field(default_factory=list)

    def add(self, container: Any, key: Any) -> None:
        if isinstance(container[key], str) and container[key]:
            self.places.append((container, key))

    def add_json(self, container: Any, key: Any) -> None:
        """A string that holds JSON (tool-call arguments)."""
        value = container[key]
        if not isinstance(value, str) or not value:
            return
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            self.places.append((container, key))
            return
        if not isinstance(parsed, (dict, list)):
            self.places.append((container, key))
            return
        first = len(self.places)
        self.add_values(parsed)
        self.documents.append((container, key, parsed, first, len(self.places)))

    def add_values(self, value: Any) -> None:
        """Every string inside a JSON value (a tool's input object)."""
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, str):
                    self.add(value, key)
                elif isinstance(item, (dict, list)):
                    self.add_values(item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, str):
                    self.add(value, index)
                elif isinstance(item, (dict, list)):
                    self.add_values(item)

    def rewrite(self, new: dict[int, str]) -> None:
        """Write ``new`` (text by place index) back, re-encoding the JSON strings that changed."""
        for index, text in new.items():
            container, key = self.places[index]
            container[key] = text
        for container, key, parsed, first, end in self.documents:
            if any(first <= index < end for index in new):
                container[key] = orjson.dumps(parsed).decode()


# --- requests ---------------------------------------------------------------------------------------


def openai_chat_request(body: dict[str, Any]) -> Texts:
    texts = Texts()
    for message in _dicts(body.get("messages")):
        content = message.get("content")
        if isinstance(content, str):
            texts.add(message, "content")
        elif isinstance(content, list):
            for part in _dicts(content):
                for key in ("text", "refusal"):
                    if key in part:
                        texts.add(part, key)
        if isinstance(message.get("refusal"), str):
            texts.add(message, "refusal")
        _tool_call_arguments(texts, message)
    prediction = body.get("prediction")
    if isinstance(prediction, dict):
        content = prediction.get("content")
        if isinstance(content, str):
            texts.add(prediction, "content")
        elif isinstance(content, list):
            for part in _dicts(content):
                if "text" in part:
                    texts.add(part, "text")
    if isinstance(body.get("user"), str):
        texts.add(body, "user")
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            if isinstance(value, str):
                texts.add(metadata, key)
    return texts


def _tool_call_arguments(texts: Texts, message: dict[str, Any]) -> None:
    """The arguments of an OpenAI message's tool calls (and of the legacy ``function_call``)."""
    for call in _dicts(message.get("tool_calls")):
        function = call.get("function")
        if isinstance(function, dict) and "arguments" in function:
            texts.add_json(function, "arguments")
    function_call = message.get("function_call")
    if isinstance(function_call, dict) and "arguments" in function_call:
        texts.add_json(function_call, "arguments")


def openai_embeddings_request(body: dict[str, Any]) -> Texts:
    texts = Texts()
    value = body.get("input")
    if isinstance(value, str):
        texts.add(body, "input")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                texts.add(value, index)
    if isinstance(body.get("user"), str):
        texts.add(body, "user")
    return texts


def anthropic_messages_request(body: dict[str, Any]) -> Texts:
    texts = Texts()
    system = body.get("system")
    if isinstance(system, str):
        texts.add(body, "system")
    elif isinstance(system, list):
        _anthropic_blocks(texts, system)
    for message in _dicts(body.get("messages")):
        content = message.get("content")
        if isinstance(content, str):
            texts.add(message, "content")
        elif isinstance(content, list):
            _anthropic_blocks(texts, content)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        texts.add(metadata, "user_id")
    return texts


def _anthropic_blocks(texts: Texts, blocks: list[Any]) -> None:
    for block in _dicts(blocks):
        kind = block.get("type")
        if kind == "text":
            texts.add(block, "text")
        elif kind == "tool_use" or kind == "server_tool_use":
            if isinstance(block.get("input"), (dict, list)):
                texts.add_values(block["input"])
        elif kind == "tool_result":
            content = block.get("content")
            if isinstance(content, str):
                texts.add(block, "content")
            elif isinstance(content, list):
                _anthropic_blocks(texts, content)
        elif kind == "thinking":
            texts.add(block, "thinking")
        elif kind == "document":
            source = block.get("source")
            if isinstance(source, dict):
                if source.get("type") == "text":
                    texts.add(source, "data")
                elif isinstance(source.get("content"), list):
                    _anthropic_blocks(texts, source["content"])
                elif isinstance(source.get("content"), str):
                    texts.add(source, "content")
            for key in ("title", "context"):
                if isinstance(block.get(key), str):
                    texts.add(block, key)
        elif kind == "search_result":
            if isinstance(block.get("content"), list):
                _anthropic_blocks(texts, block["content"])
            for key in ("title", "source"):
                if isinstance(block.get(key), str):
                    texts.add(block, key)


def _dicts(items: Any) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict)]


#: How the texts of a request are found, by (client dialect, endpoint).
REQUEST_TEXTS: dict[tuple[str, str], Callable[[dict[str, Any]], Texts]] = {
    ("openai", "chat"): openai_chat_request,
    ("openai", "embeddings"): openai_embeddings_request,
    ("anthropic", "chat"): anthropic_messages_request,
    ("anthropic", "count_tokens"): anthropic_messages_request,
}


# --- answers ----------------------------------------------------------------------------------------


def openai_chat_response(body: dict[str, Any]) -> Texts:
    texts = Texts()
    for choice in _dicts(body.get("choices")):
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        for key in ("content", "refusal", "reasoning_content", "reasoning"):
            if isinstance(message.get(key), str):
                texts.add(message, key)
        _tool_call_arguments(texts, message)
    return texts


def anthropic_messages_response(body: dict[str, Any]) -> Texts:
    texts = Texts()
    content = body.get("content")
    if isinstance(content, list):
        _anthropic_blocks(texts, content)
    return texts


#: How the texts of an answer are found, by the answer's dialect.
RESPONSE_TEXTS: dict[str, Callable[[dict[str, Any]], Texts]] = {
    "openai": openai_chat_response,
    "anthropic": anthropic_messages_response,
}
