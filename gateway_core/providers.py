"""What a provider plugin implements, and the shapes it hands back to the core.

A provider class is registered once by name (``register_providers``); the core builds one instance
per configured deployment, so per-deployment work (URLs, headers, timeouts) is done at start-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from gateway_core.errors import GatewayError
from gateway_core.types import RequestContext, Usage

if TYPE_CHECKING:
    from gateway_core.config import DeploymentConfig
    from gateway_core.http import HttpClient


class NoOptions(BaseModel):
    """Options model of a provider that takes no options of its own."""

    model_config = ConfigDict(extra="forbid")


@dataclass(slots=True)
class ProviderCall:
    """One call to a provider: the canonical (OpenAI-shaped) request body and what the core knows."""

    ctx: RequestContext
    body: dict[str, Any]
    #: The client's bytes when nothing changed the body: same-dialect providers forward them as is.
    raw: bytes | None
    #: The model name the upstream expects for this deployment.
    upstream_model: str


@dataclass(slots=True)
class CompletedResponse:
    """A complete (non-streamed) answer, already encoded as OpenAI JSON bytes."""

    body: bytes
    usage: Usage | None = None
    #: Upstream headers worth passing to the client (request id, rate limit hints).
    headers: Mapping[str, str] = field(default_factory=dict)


class ChatStream:
    """A streamed chat completion: an async iterator of complete OpenAI SSE events (bytes).

    The iterator never raises: a failing upstream ends the stream with an OpenAI ``error`` event
    and sets :attr:`error`. :attr:`usage` holds the token counts once the stream is over.
    """

    usage: Usage | None = None
    error: GatewayError | None = None
    headers: Mapping[str, str] = {}

    def __aiter__(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the upstream connection; called once when the stream ended or the client left."""


class Provider:
    """Base class of provider plugins.

    Subclasses set :attr:`name`, optionally :attr:`Options` (validated per deployment at start-up)
    and implement :meth:`chat` and, when supported, :meth:`embeddings`.
    """

    name: ClassVar[str] = ""
    #: Pydantic model of the provider-specific ``options:`` of a deployment.
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: Environment variable that supplies the API key when a deployment configures none.
    api_key_env: ClassVar[str | None] = None
    #: Whether the deployment must have an API key (from config or :attr:`api_key_env`).
    requires_api_key: ClassVar[bool] = False
    supports_embeddings: ClassVar[bool] = False

    def __init__(self, deployment: DeploymentConfig, options: BaseModel, http: HttpClient) -> None:
        self.deployment = deployment
        self.options = options
        self.http = http

    async def chat(self, call: ProviderCall) -> CompletedResponse | ChatStream:
        raise NotImplementedError

    async def embeddings(self, call: ProviderCall) -> CompletedResponse:
        raise GatewayError(
            400,
            f"The provider {self.name!r} does not support embeddings.",
            param="model",
            code="unsupported_endpoint",
        )

    def describe(self) -> dict[str, Any]:
        """What ``/-/plugins`` and health views may show; never secrets."""
        return {"provider": self.name, "model": self.deployment.model}
