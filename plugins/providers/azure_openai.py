"""Azure OpenAI: deployment URLs, ``api-version``, the ``api-key`` header and Azure's stream quirks.

The body format is OpenAI's, so requests are forwarded as bytes like the ``openai`` provider does.
The deployment's ``model`` is the Azure deployment name. Azure starts streams with a chunk whose
``choices`` is empty (its prompt filter results); it is dropped, since OpenAI clients do not expect it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, Field

from gateway_core import ConfigError, DeploymentConfig, Provider, hookimpl
from plugins.providers.openai_base import OpenAIOptions, OpenAIProvider

DEFAULT_API_VERSION = "2024-10-21"


class AzureOptions(OpenAIOptions):
    #: ``api-version`` query parameter; ``v1`` selects the version-less ``/openai/v1`` API.
    api_version: str = Field(
        default_factory=lambda: os.environ.get("AZURE_OPENAI_API_VERSION", DEFAULT_API_VERSION)
    )
    #: Send the key as ``Authorization: Bearer`` (a Microsoft Entra ID token) instead of ``api-key``.
    entra_token: bool = False


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


@hookimpl
def lockgate_register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("azure_openai", AzureOpenAIProvider)
