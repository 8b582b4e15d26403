"""Google's Gemini API (AI Studio): ``generateContent``, ``streamGenerateContent`` (``alt=sse``)
and ``batchEmbedContents``, translated from and to the OpenAI form."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from gateway_core import DeploymentConfig, HttpClient, Provider, hookimpl
from gateway_core.credentials import Credential
from plugins.providers.google_base import GoogleGenerativeProvider


class GeminiOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: API version in the URL path.
    api_version: str = "v1beta"


class GeminiProvider(GoogleGenerativeProvider):
    name: ClassVar[str] = "gemini"
    Options: ClassVar[type[BaseModel]] = GeminiOptions
    api_key_env: ClassVar[str | None] = "GEMINI_API_KEY"
    requires_api_key: ClassVar[bool] = True
    default_base_url: ClassVar[str] = "https://generativelanguage.googleapis.com"

    def __init__(self, deployment: DeploymentConfig, options: BaseModel, http: HttpClient) -> None:
        super().__init__(deployment, options, http)
        assert isinstance(options, GeminiOptions)
        base = (deployment.base_url or self.default_base_url).rstrip("/")
        self.base = f"{base}/{options.api_version}"

    def prepare_credential(self, credential: Credential) -> dict[str, str]:
        """The request headers of calls made with ``credential``."""
        key = self.api_key("GOOGLE_API_KEY", credential=credential)
        assert key is not None
        return {"Content-Type": "application/json", "x-goog-api-key": key, **self.deployment.headers}

    def model_url(self, credential: Credential, model: str, method: str) -> str:
        name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
        return f"{self.base}/{name}:{method}"

    async def request_headers(self, credential: Credential) -> Mapping[str, str]:
        headers: dict[str, str] = credential.auth
        return headers


@hookimpl
def lockgate_register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("gemini", GeminiProvider)
