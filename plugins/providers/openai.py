"""OpenAI and any OpenAI-compatible base URL, with OpenRouter and GLM (Zhipu) as named presets."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel

from gateway_core import Provider, hookimpl
from plugins.providers.openai_base import OpenAIOptions, OpenAIProvider


class OpenRouterOptions(OpenAIOptions):
    #: Sent as ``HTTP-Referer`` and ``X-Title`` for OpenRouter's app attribution.
    app_url: str | None = None
    app_name: str | None = None


class OpenRouterProvider(OpenAIProvider):
    name: ClassVar[str] = "openrouter"
    Options: ClassVar[type[BaseModel]] = OpenRouterOptions
    api_key_env: ClassVar[str | None] = "OPENROUTER_API_KEY"
    default_base_url: ClassVar[str] = "https://openrouter.ai/api/v1"

    def extra_headers(self, options: BaseModel) -> dict[str, str]:
        assert isinstance(options, OpenRouterOptions)
        headers = {}
        if options.app_url:
            headers["HTTP-Referer"] = options.app_url
        if options.app_name:
            headers["X-Title"] = options.app_name
        return headers


class GLMOptions(OpenAIOptions):
    #: GLM reports usage in its last chunk unasked.
    request_stream_usage: bool = False


class GLMProvider(OpenAIProvider):
    """Zhipu's GLM models through their OpenAI-compatible endpoint."""

    name: ClassVar[str] = "glm"
    Options: ClassVar[type[BaseModel]] = GLMOptions
    api_key_env: ClassVar[str | None] = "ZHIPUAI_API_KEY"
    default_base_url: ClassVar[str] = "https://open.bigmodel.cn/api/paas/v4"


@hookimpl
def lockgate_register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("openai", OpenAIProvider)
    register("openrouter", OpenRouterProvider)
    register("glm", GLMProvider)
