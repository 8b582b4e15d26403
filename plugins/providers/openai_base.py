"""The provider base for upstreams that speak OpenAI's wire format.

The client speaks OpenAI and so does the upstream: request bytes are forwarded as they came unless
the model name or the stream-usage option must change, and streams are passed through event by event.
Shared by the ``openai`` (with its OpenRouter and GLM presets) and ``azure_openai`` plugins; it
registers nothing itself.
"""

from __future__ import annotations

from typing import ClassVar

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict

from gateway_core import (
    ChatStream,
    CompletedResponse,
    DeploymentConfig,
    HttpClient,
    Provider,
    ProviderCall,
    RequestContext,
    Usage,
)
from gateway_core.credentials import Credential
from gateway_core.errors import upstream_error
from gateway_core.http import forwarded_headers, read_json
from gateway_core.sse import PassthroughStream


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Ask the upstream for a usage chunk on streams (``stream_options.include_usage``) even when
    #: the client did not, so every stream is accounted; the extra chunk is not shown to the client.
    request_stream_usage: bool = True
    organization: str | None = None
    project: str | None = None


class OpenAIProvider(Provider):
    name: ClassVar[str] = "openai"
    Options: ClassVar[type[BaseModel]] = OpenAIOptions
    api_key_env: ClassVar[str | None] = "OPENAI_API_KEY"
    default_base_url: ClassVar[str] = "https://api.openai.com/v1"
    supports_embeddings: ClassVar[bool] = True
    #: Drop stream chunks with empty ``choices`` and no usage (Azure's content-filter preamble), which
    #: clients indexing ``choices[0]`` would trip over.
    drop_empty_choices: ClassVar[bool] = False

    def __init__(self, deployment: DeploymentConfig, options: BaseModel, http: HttpClient) -> None:
        super().__init__(deployment, options, http)
        assert isinstance(options, OpenAIOptions)
        self.request_stream_usage = options.request_stream_usage
        self.chat_url, self.embeddings_url = self.endpoints(deployment, options)

    def prepare_credential(self, credential: Credential) -> dict[str, str]:
        """The request headers of calls made with ``credential``."""
        options = credential.options
        assert isinstance(options, OpenAIOptions)
        deployment = self.deployment
        if deployment.base_url is not None and not self.requires_api_key:
            # A custom OpenAI-compatible server gets only its own key, never OPENAI_API_KEY.
            key = credential.api_key
        else:
            key = self.api_key(required=True, credential=credential)
        headers = {"Content-Type": "application/json"}
        if key:
            headers.update(self.auth_headers(key, options))
        if options.organization:
            headers["OpenAI-Organization"] = options.organization
        if options.project:
            headers["OpenAI-Project"] = options.project
        headers.update(self.extra_headers(options))
        headers.update(deployment.headers)
        return headers

    def endpoints(self, deployment: DeploymentConfig, options: BaseModel) -> tuple[str, str]:
        """The chat completions and embeddings URLs of this deployment."""
        base = (deployment.base_url or self.default_base_url).rstrip("/")
        return f"{base}/chat/completions", f"{base}/embeddings"

    def auth_headers(self, key: str, options: BaseModel) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def extra_headers(self, options: BaseModel) -> dict[str, str]:
        return {}

    async def _post(self, ctx: RequestContext, url: str, payload: bytes) -> aiohttp.ClientResponse:
        credential = await self.credential(ctx)
        headers: dict[str, str] = credential.auth
        return await self.send(url, payload, headers)

    async def _read(self, response: aiohttp.ClientResponse) -> CompletedResponse:
        body, data = await read_json(response, self.name)
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
        response = await self._post(
            call.ctx, self.chat_url, payload if payload is not None else orjson.dumps(body)
        )
        if not call.ctx.stream:
            return await self._read(response)
        if not response.content_type.startswith("text/event-stream"):
            response.close()
            raise upstream_error(f"The upstream provider {self.name!r} did not answer with a stream.")
        return PassthroughStream(
            response,
            provider=self.name,
            forward_usage_chunk=forward_usage_chunk,
            drop_empty_choices=self.drop_empty_choices,
            headers=forwarded_headers(response.headers),
            redact=self.redact,
        )

    async def embeddings(self, call: ProviderCall) -> CompletedResponse:
        payload = call.raw
        if call.body.get("model") != call.upstream_model or payload is None:
            payload = orjson.dumps({**call.body, "model": call.upstream_model})
        response = await self._post(call.ctx, self.embeddings_url, payload)
        return await self._read(response)

    def describe(self) -> dict[str, object]:
        return {"provider": self.name, "model": self.deployment.model, "url": self.chat_url.rsplit("/", 2)[0]}
