"""Helpers for end-to-end tests that talk to the gateway through the ``openai`` SDK's chat API."""

from __future__ import annotations

from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)


def user(text: str) -> list[ChatCompletionMessageParam]:
    """A conversation of one user message."""
    return [{"role": "user", "content": text}]


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    """The tool calls of an answer, all of which must be function calls."""
    calls = message.tool_calls or []
    assert all(isinstance(call, ChatCompletionMessageFunctionToolCall) for call in calls)
    return [call for call in calls if isinstance(call, ChatCompletionMessageFunctionToolCall)]


def finish_chunks(chunks: list[ChatCompletionChunk]) -> list[str]:
    """The finish reasons a stream carried, in order."""
    return [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason is not None]


def streamed_text(chunks: list[ChatCompletionChunk]) -> str:
    """The text a stream carried."""
    return "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
