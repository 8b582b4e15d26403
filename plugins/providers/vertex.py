"""Vertex AI: Gemini models and Anthropic's Claude models, authenticated with a service account.

The deployment's ``model`` selects the publisher (``claude-*`` is Anthropic's, everything else
Google's) unless ``options.publisher`` says otherwise. Credentials come from ``options.credentials``
(the key file's JSON, usually ``${file:...}``) or the file named by ``GOOGLE_APPLICATION_CREDENTIALS``.
A deployment's credential pool may give each credential its own service account, project and location
(``credentials[].options``); each account has its own cached access token.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from gateway_core import (
    ChatStream,
    CompletedResponse,
    ConfigError,
    DeploymentConfig,
    GatewayError,
    HttpClient,
    Provider,
    ProviderCall,
    Usage,
    hookimpl,
)
from gateway_core.credentials import Credential
from gateway_core.embeddings import embeddings_answer
from gateway_core.http import ErrorDecoder, read_json
from plugins.providers.anthropic_base import NOT_COUNTED, AnthropicMessagesProvider, AnthropicOptions
from plugins.providers.google_auth import ServiceAccountTokens, parse_service_account
from plugins.providers.google_base import GoogleGenerativeProvider

ANTHROPIC_VERTEX_VERSION = "vertex-2023-10-16"


class VertexOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str | None = Field(None, description="Google Cloud project; defaults to the key's project_id")
    location: str = Field("us-central1", description="region, or `global`")
    credentials: SecretStr | None = Field(None, description="service-account key JSON")
    publisher: Literal["google", "anthropic"] | None = None
    #: For Claude models: ``max_tokens`` when the client gives none.
    default_max_tokens: int = Field(4096, ge=1)


def _load_credentials(options: VertexOptions) -> dict[str, Any]:
    if options.credentials is not None:
        return parse_service_account(options.credentials.get_secret_value(), "options.credentials")
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        raise ConfigError("provider 'vertex' needs options.credentials or GOOGLE_APPLICATION_CREDENTIALS")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"GOOGLE_APPLICATION_CREDENTIALS: cannot read {path}: {exc.strerror}") from None
    return parse_service_account(text, path)


class _VertexPlace:
    """URLs and the bearer token of one credential (service account) of a Vertex deployment."""

    def __init__(self, deployment: DeploymentConfig, options: VertexOptions, http: HttpClient) -> None:
        info = _load_credentials(options)
        project = options.project or info.get("project_id")
        if not project:
            raise ConfigError("provider 'vertex' needs options.project (the key file names none)")
        location = options.location
        host = deployment.base_url or (
            "https://aiplatform.googleapis.com"
            if location == "global"
            else f"https://{location}-aiplatform.googleapis.com"
        )
        self.prefix = f"{host.rstrip('/')}/v1/projects/{project}/locations/{location}/publishers"
        self.tokens = ServiceAccountTokens.shared(info, http)
        self.extra_headers = dict(deployment.headers)
        self._token = ""
        self._headers: Mapping[str, str] = {}

    async def headers(self) -> Mapping[str, str]:
        """The request headers with the account's current token (rebuilt only when it changed)."""
        token = await self.tokens.token()
        if token != self._token:
            self._headers = {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                **self.extra_headers,
            }
            self._token = token
        return self._headers

    def watch(self, headers: Mapping[str, str], decode_error: ErrorDecoder) -> ErrorDecoder:
        """``decode_error``, also forgetting the request's token when Vertex refuses it (401): a token
        revoked before its expiry is replaced on the next request instead of failing until then."""

        def decode(status: int, body: bytes, answer: Mapping[str, str], provider: str) -> GatewayError:
            if status == 401:
                self.tokens.forget(headers.get("Authorization", "").removeprefix("Bearer "))
            return decode_error(status, body, answer, provider)

        return decode


def _place(credential: Credential) -> _VertexPlace:
    place = credential.auth
    assert isinstance(place, _VertexPlace)
    return place


class VertexGemini(GoogleGenerativeProvider):
    """Gemini models on Vertex; its credentials are those of the :class:`VertexProvider` it serves."""

    name: ClassVar[str] = "vertex"

    def model_url(self, credential: Credential, model: str, method: str) -> str:
        return f"{_place(credential).prefix}/google/models/{model}:{method}"

    def error_decoder(self, credential: Credential, headers: Mapping[str, str]) -> ErrorDecoder:
        return _place(credential).watch(headers, super().error_decoder(credential, headers))

    async def request_headers(self, credential: Credential) -> Mapping[str, str]:
        return await _place(credential).headers()

    def count_tokens_payload(self, model: str, request: dict[str, Any]) -> dict[str, Any]:
        return request  # Vertex takes contents, systemInstruction and tools at the top level

    async def embeddings(self, call: ProviderCall) -> CompletedResponse:
        """Vertex's text-embedding ``predict`` method (``batchEmbedContents`` is AI Studio's)."""
        from gateway_core.validation import validate_embeddings

        validate_embeddings(call.body)
        texts = call.body["input"] if isinstance(call.body["input"], list) else [call.body["input"]]
        if not all(isinstance(text, str) for text in texts):
            from gateway_core import bad_request

            raise bad_request("Vertex AI embeddings take text input, not token arrays.", param="input")
        parameters: dict[str, Any] = {}
        if isinstance(call.body.get("dimensions"), int):
            parameters["outputDimensionality"] = call.body["dimensions"]
        payload = {"instances": [{"content": text} for text in texts], "parameters": parameters}
        response = await self._post(call.ctx, call.upstream_model, "predict", payload)
        _, data = await read_json(response, self.name)
        vectors = []
        tokens = 0
        for prediction in data.get("predictions", []):
            vectors.append(prediction["embeddings"]["values"])
            tokens += int(prediction["embeddings"].get("statistics", {}).get("token_count", 0))
        answer = embeddings_answer(
            vectors,
            model=call.upstream_model,
            encoding_format=call.body.get("encoding_format"),
            prompt_tokens=tokens,
        )
        return CompletedResponse(orjson.dumps(answer), Usage(prompt_tokens=tokens, total_tokens=tokens))


class VertexClaude(AnthropicMessagesProvider):
    """Claude models on Vertex; its credentials are those of the :class:`VertexProvider` it serves."""

    name: ClassVar[str] = "vertex"

    def __init__(self, deployment: DeploymentConfig, options: VertexOptions, http: HttpClient) -> None:
        claude_options = AnthropicOptions(default_max_tokens=options.default_max_tokens)
        super().__init__(deployment, claude_options, http)

    def error_decoder(self, credential: Credential, headers: Mapping[str, str]) -> ErrorDecoder:
        return _place(credential).watch(headers, super().error_decoder(credential, headers))

    def urls(self, credential: Credential, model: str, stream: bool) -> tuple[str, str]:
        base = f"{_place(credential).prefix}/anthropic/models"
        method = "streamRawPredict" if stream else "rawPredict"
        return f"{base}/{model}:{method}", f"{base}/count-tokens:rawPredict"

    def encode(self, call: ProviderCall) -> dict[str, Any]:
        payload = super().encode(call)
        payload.pop("model", None)  # the model is in the URL
        payload["anthropic_version"] = ANTHROPIC_VERTEX_VERSION
        return payload

    def native_payload(self, call: ProviderCall) -> dict[str, Any]:
        payload = super().native_payload(call)
        payload.pop("model", None)
        payload["anthropic_version"] = ANTHROPIC_VERTEX_VERSION
        return payload

    async def count_tokens(self, call: ProviderCall) -> int:
        # Vertex counts through a fixed "count-tokens" model that takes the real one in the body.
        if call.client_body is not None and call.ctx.dialect == "anthropic":
            payload = {**call.client_body, "model": call.upstream_model}
        else:
            payload = AnthropicMessagesProvider.encode(self, call)
        for field in NOT_COUNTED:
            payload.pop(field, None)
        response = await self._post(call, payload, count=True)
        _, data = await read_json(response, self.name)
        return int(data.get("input_tokens", 0)) if isinstance(data, dict) else 0

    async def request_headers(self, credential: Credential) -> Mapping[str, str]:
        return await _place(credential).headers()


class VertexProvider(Provider):
    """Dispatches to the Gemini or the Claude flow by publisher."""

    name: ClassVar[str] = "vertex"
    Options: ClassVar[type[BaseModel]] = VertexOptions
    supports_embeddings: ClassVar[bool] = True

    def __init__(self, deployment: DeploymentConfig, options: BaseModel, http: HttpClient) -> None:
        super().__init__(deployment, options, http)
        assert isinstance(options, VertexOptions)
        model = deployment.model or ""
        publisher = options.publisher or ("anthropic" if model.startswith("claude") else "google")
        self.delegate: Provider = (
            VertexClaude(deployment, options, http)
            if publisher == "anthropic"
            else VertexGemini(deployment, options, http)
        )
        # The delegate calls with this provider's credentials (prepared here) and proxies.
        self.delegate.credentials = self.credentials
        self.delegate.proxies = self.proxies
        self.native_dialects = self.delegate.native_dialects

    def prepare_credential(self, credential: Credential) -> _VertexPlace:
        """The project URLs and the token source of ``credential``'s service account."""
        options = credential.options
        assert isinstance(options, VertexOptions)
        return _VertexPlace(self.deployment, options, self.http)

    async def chat(self, call: ProviderCall) -> CompletedResponse | ChatStream:
        return await self.delegate.chat(call)

    async def embeddings(self, call: ProviderCall) -> CompletedResponse:
        return await self.delegate.embeddings(call)

    async def count_tokens(self, call: ProviderCall) -> int:
        return await self.delegate.count_tokens(call)


@hookimpl
def lockgate_register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("vertex", VertexProvider)
