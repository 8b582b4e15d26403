"""Token counts the gateway estimates itself, for a stream that ended before the upstream reported them.

A client that leaves mid-stream (or a shutdown that cuts a stream) was still served part of an answer.
Its usage is then estimated so it can be recorded and charged: the prompt from the request (see
:func:`~gateway_core.pricing.estimate_prompt_tokens`), the answer from what was relayed. The relay only
counts the bytes it sends and keeps the last event it sent; the share of generated text in that event
(its ``content``, ``text``, tool ``arguments``... values), applied to every byte relayed, gives the
characters of the answer, at about four per token. Nothing is parsed while the stream runs.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from gateway_core.pricing import estimate_prompt_tokens
from gateway_core.types import Usage

#: About four characters of English text per token (OpenAI's rule of thumb).
CHARS_PER_TOKEN = 4
#: Keys whose string values are generated text, in OpenAI's and Anthropic's stream events.
_TEXT_KEYS = frozenset(
    {"content", "text", "arguments", "partial_json", "thinking", "reasoning_content", "refusal"}
)


class Relayed:
    """What a stream sent to its client: the bytes counted, and the last event kept (not copied)."""

    __slots__ = ("last", "size")

    def __init__(self) -> None:
        self.size = 0
        self.last = b""


def _text_length(value: Any, is_text: bool = False) -> int:
    if isinstance(value, str):
        return len(value) if is_text else 0
    if isinstance(value, dict):
        return sum(_text_length(item, key in _TEXT_KEYS) for key, item in value.items())
    if isinstance(value, list):
        return sum(_text_length(item) for item in value)
    return 0


def text_characters(events: bytes) -> int:
    """Characters of generated text in SSE events (any number of them, any dialect)."""
    total = 0
    for line in events.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                total += _text_length(orjson.loads(line[5:]))
            except orjson.JSONDecodeError:
                continue
    return total


def output_tokens(relayed: Relayed) -> int:
    """Estimated tokens of the answer relayed so far."""
    sample = relayed.last
    if not relayed.size or not sample:
        return 0
    characters = relayed.size * text_characters(sample) / len(sample)
    return math.ceil(characters / CHARS_PER_TOKEN)


def cut_stream_usage(body: dict[str, Any], reported: Usage | None, relayed: Relayed) -> Usage | None:
    """The usage of a stream cut short: what the upstream reported so far, completed by estimates.

    The prompt is the upstream's count when it gave one (Anthropic does at the start), else estimated
    from the request; the answer is the larger of the upstream's count so far and the estimate of what
    was relayed. None when nothing was relayed and nothing reported. ``estimated`` tells whether an
    estimate went into it.
    """
    if reported is None and not relayed.size:
        return None
    prompt = reported.prompt_tokens if reported is not None else 0
    completion = reported.completion_tokens if reported is not None else 0
    estimated = False
    if not prompt:
        prompt, estimated = estimate_prompt_tokens(body), True
    relayed_tokens = output_tokens(relayed)
    if relayed_tokens > completion:
        completion, estimated = relayed_tokens, True
    if not estimated and reported is not None:
        return reported
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    if reported is not None:
        usage.cached_tokens = reported.cached_tokens
        usage.cache_write_tokens = reported.cache_write_tokens
        usage.reasoning_tokens = reported.reasoning_tokens
    usage.estimated = True
    return usage
