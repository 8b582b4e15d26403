"""Anthropic's Messages API (api.anthropic.com or a compatible base URL) as a provider."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from pydantic import BaseModel

from gateway_core import DeploymentConfig, HttpClient, Provider, hookimpl
from gateway_core.credentials import Credential
from plugins.providers.anthropic_base import AnthropicMessagesProvider, AnthropicOptions


class AnthropicProvider(AnthropicMessagesProvider):
    name: ClassVar[str] = "anthropic"
    api_key_env: ClassVar[str | None] = "ANTHROPIC_API_KEY"
    requires_api_key: ClassVar[bool] = True
    default_base_url: ClassVar[str] = "https://api.anthropic.com"

    def __init__(self, deployment: DeploymentConfig, options: BaseModel, http: HttpClient) -> None:
        super().__init__(deployment, options, http)
        assert isinstance(options, AnthropicOptions)
        base = (deployment.base_url or self.default_base_url).rstrip("/")
        self.messages_url = f"{base}/v1/messages"
        self.count_url = f"{base}/v1/messages/count_tokens"

    def prepare_credential(self, credential: Credential) -> dict[str, str]:
        """The request headers of calls made with ``credential``."""
        options = credential.options
        assert isinstance(options, AnthropicOptions)
        key = self.api_key(credential=credential)
        assert key is not None
        headers = {"Content-Type": "application/json", "x-api-key": key, "anthropic-version": options.version}
        if options.beta:
            headers["anthropic-beta"] = ",".join(options.beta)
        headers.update(self.deployment.headers)
        return headers

    def urls(self, credential: Credential, model: str, stream: bool) -> tuple[str, str]:
        return self.messages_url, self.count_url

    async def request_headers(self, credential: Credential) -> Mapping[str, str]:
        headers: dict[str, str] = credential.auth
        return headers


@hookimpl
def lockgate_register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("anthropic", AnthropicProvider)
