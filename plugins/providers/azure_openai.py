"""Azure OpenAI: deployment URLs, ``api-version``, the ``api-key`` header and Azure's stream quirks.

The body format is OpenAI's, so requests are forwarded as bytes like the ``openai`` provider does.
The deployment's ``model`` is the Azure deployment name. Azure starts streams with a chunk whose
``choices`` is empty (its prompt filter results); it is dropped, since OpenAI clients do not expect it.
An ``api-version`` Azure does not serve is answered 502 (the operator's to fix), not Azure's 400.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import ClassVar

import aiohttp
from pydantic import BaseModel, Field

from gateway_core import ConfigError, DeploymentConfig, GatewayError, Provider, RequestContext, hookimpl
from gateway_core.errors import error_payload_from, upstream_error
from gateway_core.http import error_from_upstream
from plugins.providers.openai_base import OpenAIOptions, OpenAIProvider

DEFAULT_API_VERSION = "2024-10-21"


class AzureOptions(OpenAIOptions):
    #: ``api-version`` query parameter; ``v1`` selects the version-less ``/openai/v1`` API.
    api_version: str = Field(
        default_factory=lambda: os.environ.get("AZURE_OPENAI_API_VERSION", DEFAULT_API_VERSION)
    )
    #: Send the key as ``Authorization: Bearer`` (a Microsoft Entra ID token) instead of ``api-key``.
    entra_token: bool = False


def decode_error(status: int, body: bytes, headers: Mapping[str, str], provider: str) -> GatewayError:
    """Azure's error answers; an ``api-version`` Azure does not serve is the deployment's fault (502),
    not the client's, although Azure answers it with a 400."""
    if status == 400:
        message = str((error_payload_from(body) or {}).get("message") or "")
        if "api version" in message.lower():
            return upstream_error(
                f"The upstream provider {provider!r} does not serve the deployment's api-version: {message}",
                code="upstream_config_error",
            )
    return error_from_upstream(status, body, headers, provider)


class AzureOpenAIProvider(OpenAIProvider):
    name: ClassVar[str] = "azure_openai"
    Options: ClassVar[type[BaseModel]] = AzureOptions
    api_key_env: ClassVar[str | None] = "AZURE_OPENAI_API_KEY"
    requires_api_key: ClassVar[bool] = True
    drop_empty_choices: ClassVar[bool] = True

    def endpoints(self, deployment: DeploymentConfig, options: BaseModel) -> tuple[str, str]:
        assert isinstance(options, AzureOptions)
        endpoint = (deployment.base_url or os.environ.get("AZURE_OPENAI_ENDPOINT") or "").rstrip("/")
        if not endpoint:
            raise ConfigError("provider 'azure_openai' needs base_url (https://RESOURCE.openai.azure.com)")
        if endpoint.endswith("/openai"):
            endpoint = endpoint[: -len("/openai")]
        if options.api_version == "v1":
            base = f"{endpoint}/openai/v1"
            return f"{base}/chat/completions", f"{base}/embeddings"
        if not deployment.model:
            raise ConfigError("provider 'azure_openai' needs model: the Azure deployment name")
        base = f"{endpoint}/openai/deployments/{deployment.model}"
        query = f"?api-version={options.api_version}"
        return f"{base}/chat/completions{query}", f"{base}/embeddings{query}"

    def auth_headers(self, key: str, options: BaseModel) -> dict[str, str]:
        assert isinstance(options, AzureOptions)
        return {"Authorization": f"Bearer {key}"} if options.entra_token else {"api-key": key}

    async def _post(self, ctx: RequestContext, url: str, payload: bytes) -> aiohttp.ClientResponse:
        credential = await self.credential(ctx)
        headers: dict[str, str] = credential.auth
        return await self.send(url, payload, headers, decode_error)


@hookimpl
def lockgate_register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("azure_openai", AzureOpenAIProvider)
