"""OpenAI and OpenAI-compatible upstreams (any base URL), with OpenRouter and GLM (Zhipu) presets.

The client speaks OpenAI and so does the upstream: request bytes are forwarded as they came unless
the model name or the stream-usage option must change, and streams are passed through event by event.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import ClassVar

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict

from gateway_core import (
    ChatStream,
    CompletedResponse,
    ConfigError,
    DeploymentConfig,
    HttpClient,
    Provider,
    ProviderCall,
    Usage,
    hookimpl,
)
from gateway_core.errors import upstream_error
from gateway_core.http import client_timeout, error_from_exception, error_from_upstream, forwarded_headers
from gateway_core.sse import PassthroughStream


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Ask the upstream for a usage chunk on streams (``stream_options.include_usage``) even when
    #: the client did not, so every stream is accounted; the extra chunk is not shown to the client.
    request_stream_usage: bool = True
    organization: str | None = None
    project: str | None = None


class OpenRouterOptions(OpenAIOptions):
    #: Sent as ``HTTP-Referer`` and ``X-Title`` for OpenRouter's app attribution.
    app_url: str | None = None
    app_name: str | None = None


class OpenAIProvider(Provider):
    name: ClassVar[str] = "openai"
    Options: ClassVar[type[BaseModel]] = OpenAIOptions
    api_key_env: ClassVar[str | None] = "OPENAI_API_KEY"
    default_base_url: ClassVar[str] = "https://api.openai.com/v1"
    supports_embeddings: ClassVar[bool] = True

    def __init__(self, deployment: DeploymentConfig, options: BaseModel, http: HttpClient) -> None:
        super().__init__(deployment, options, http)
        assert isinstance(options, OpenAIOptions)
        self.request_stream_usage = options.request_stream_usage
        base = (deployment.base_url or self.default_base_url).rstrip("/")
        self.chat_url = f"{base}/chat/completions"
        self.embeddings_url = f"{base}/embeddings"
        if deployment.api_key is not None:
            key: str | None = deployment.api_key.get_secret_value()
        else:
            key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if not key and deployment.base_url is None:
            raise ConfigError(f"provider {self.name!r} needs an API key: set api_key or {self.api_key_env}")
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if options.organization:
            headers["OpenAI-Organization"] = options.organization
        if options.project:
            headers["OpenAI-Project"] = options.project
        headers.update(self.extra_headers(options))
        headers.update(deployment.headers)
        self.headers = headers
        self.timeout = client_timeout(deployment.timeout)
        self.proxy = deployment.proxy

    def extra_headers(self, options: BaseModel) -> dict[str, str]:
        return {}

    async def _post(self, url: str, payload: bytes) -> aiohttp.ClientResponse:
        try:
            response = await self.http.session.post(
                url, data=payload, headers=self.headers, timeout=self.timeout, proxy=self.proxy
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise error_from_exception(exc, self.name) from None
        if response.status >= 400:
            try:
                body = await response.read()
            except (TimeoutError, aiohttp.ClientError):
                body = b""
            finally:
                response.release()
            raise error_from_upstream(response.status, body, response.headers, self.name)
        return response

    async def _read(self, response: aiohttp.ClientResponse) -> CompletedResponse:
        try:
            body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            response.close()
            raise error_from_exception(exc, self.name) from None
        except BaseException:
            response.close()
            raise
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise upstream_error(
                f"The upstream provider {self.name!r} answered with malformed JSON."
            ) from None
        usage = Usage.from_openai(data.get("usage")) if isinstance(data, dict) else None
        return CompletedResponse(body, usage, forwarded_headers(response.headers))

    async def chat(self, call: ProviderCall) -> CompletedResponse | ChatStream:
        body = call.body
        payload = call.raw
        forward_usage_chunk = True
        if call.ctx.stream:
            stream_options = body.get("stream_options")
            wants_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
            if not wants_usage and self.request_stream_usage:
                body = {**body, "stream_options": {**(stream_options or {}), "include_usage": True}}
                forward_usage_chunk = False
                payload = None
        if body.get("model") != call.upstream_model:
            body = {**body, "model": call.upstream_model}
            payload = None
        response = await self._post(self.chat_url, payload if payload is not None else orjson.dumps(body))
        if not call.ctx.stream:
            return await self._read(response)
        if not response.content_type.startswith("text/event-stream"):
            response.close()
            raise upstream_error(f"The upstream provider {self.name!r} did not answer with a stream.")
        return PassthroughStream(
            response,
            provider=self.name,
            forward_usage_chunk=forward_usage_chunk,
            headers=forwarded_headers(response.headers),
        )

    async def embeddings(self, call: ProviderCall) -> CompletedResponse:
        payload = call.raw
        if call.body.get("model") != call.upstream_model or payload is None:
            payload = orjson.dumps({**call.body, "model": call.upstream_model})
        response = await self._post(self.embeddings_url, payload)
        return await self._read(response)

    def describe(self) -> dict[str, object]:
        return {"provider": self.name, "model": self.deployment.model, "url": self.chat_url.rsplit("/", 2)[0]}


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
