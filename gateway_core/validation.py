"""Checks of an OpenAI-shaped request that the gateway itself relies on; the rest is the upstream's
to judge. Client mistakes raise 400 in OpenAI's words.
"""

from __future__ import annotations

from typing import Any

from gateway_core.errors import bad_request

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise bad_request("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model:
        raise bad_request("`model` must be a non-empty string.", param="model")
    return model


def validate_chat(body: dict[str, Any]) -> tuple[str, bool]:
    """Check what the gateway itself relies on; everything else is the upstream's to judge."""
    model = _model_of(body)
    messages = body.get("messages")
    if messages is None:
        raise bad_request(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"`messages[{index}]` must be an object.", param=f"messages[{index}]")
        role = message.get("role")
        if role not in _ROLES:
            raise bad_request(
                f"Invalid value for 'messages[{index}].role': {role!r}. Supported values are: "
                "'system', 'developer', 'user', 'assistant' and 'tool'.",
                param=f"messages[{index}].role",
                code="invalid_value",
            )
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("`stream` must be a boolean.", param="stream")
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise bad_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code="invalid_value",
            )
        if not isinstance(stream_options, dict):
            raise bad_request("`stream_options` must be an object.", param="stream_options")
    return model, bool(stream)


def validate_embeddings(body: dict[str, Any]) -> str:
    model = _model_of(body)
    data = body.get("input")
    if data is None:
        raise bad_request(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    valid = (isinstance(data, str) and data != "") or (
        isinstance(data, list)
        and bool(data)
        and (
            all(isinstance(item, str) and item for item in data)
            or all(isinstance(item, int) for item in data)
            or all(isinstance(item, list) and item and all(isinstance(t, int) for t in item) for item in data)
        )
    )
    if not valid:
        raise bad_request(
            "'input' must be a non-empty string, an array of non-empty strings, or token arrays.",
            param="input",
        )
    encoding_format = body.get("encoding_format")
    if encoding_format is not None and encoding_format not in ("float", "base64"):
        raise bad_request(
            f"Invalid value for 'encoding_format': {encoding_format!r}. "
            "Supported values are: 'float' and 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    return model
