"""A Lockgate plugin: the ``shout`` provider answers with the last user message in capitals.

Options of one deployment, validated when the gateway builds its deployments::

    models:
      loud:
        deployments:
          - provider: shout
            options: {exclamations: 3}

Options of the plugin itself, namespaced under its name and validated in ``lockgate_startup``::

    plugins:
      lockgate_shout:
        prefix: "HEY: "
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway_core import ChatStream, CompletedResponse, Gateway, Provider, ProviderCall, Usage, hookimpl

__version__ = "0.3.1"

NAME = "lockgate_shout"
DONE = b"data: [DONE]\n\n"


class ShoutOptions(BaseModel):
    """The ``options:`` of a ``provider: shout`` deployment."""

    model_config = ConfigDict(extra="forbid")

    exclamations: int = Field(1, ge=0, le=10, description="exclamation marks after the answer")


class ShoutSettings(BaseModel):
    """The plugin's own options, under ``plugins.lockgate_shout``."""

    model_config = ConfigDict(extra="forbid")  # an unknown key is an error, not silently ignored

    prefix: str = Field("", max_length=32, description="put in front of every answer")


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            parts = [part.get("text", "") for part in content if isinstance(part, dict)]
            return " ".join(part for part in parts if isinstance(part, str))
        return content if isinstance(content, str) else ""
    return ""


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class ShoutStream(ChatStream):
    """The answer as OpenAI stream events, one word per chunk."""

    def __init__(self, events: list[bytes], usage: Usage) -> None:
        self.events = events
        self.usage = usage

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self.events:
            yield event


class ShoutProvider(Provider):
    name: ClassVar[str] = "shout"
    Options: ClassVar[type[BaseModel]] = ShoutOptions

    async def chat(self, call: ProviderCall) -> CompletedResponse | ChatStream:
        options = self.options
        assert isinstance(options, ShoutOptions)
        settings: ShoutSettings = call.ctx.gateway.plugin_state[NAME]
        text = settings.prefix + last_user_text(call.body).upper() + "!" * options.exclamations
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in call.body["messages"])
        completion_tokens = len(text.split())
        usage = Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
        head = {
            "id": f"chatcmpl-{call.ctx.request_id}",
            "created": int(time.time()),
            "model": call.upstream_model,
        }
        openai_usage = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
        if not call.ctx.stream:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            answer = {**head, "object": "chat.completion", "choices": [choice], "usage": openai_usage}
            return CompletedResponse(orjson.dumps(answer), usage)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            return sse({**head, "object": "chat.completion.chunk", "choices": [choice]})

        words = text.split(" ")
        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": word if i == 0 else " " + word}) for i, word in enumerate(words)]
        events.append(chunk({}, "stop"))
        stream_options = call.body.get("stream_options") or {}
        if stream_options.get("include_usage"):
            events.append(
                sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": openai_usage})
            )
        events.append(DONE)
        return ShoutStream(events, usage)


@hookimpl
def lockgate_register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("shout", ShoutProvider)


@hookimpl
def lockgate_startup(gateway: Gateway) -> None:
    gateway.plugin_state[NAME] = gateway.config.plugin_config(NAME, ShoutSettings)
