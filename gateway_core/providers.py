"""What a provider plugin implements, and the shapes it hands back to the core.

A provider class is registered once by name (``register_providers``); the core builds one instance
per configured deployment, so per-deployment work (URLs, headers, timeouts) is done at start-up.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict

from gateway_core.credentials import Credential, CredentialPool
from gateway_core.errors import ConfigError, GatewayError
from gateway_core.http import ErrorDecoder, client_timeout, error_from_upstream, post
from gateway_core.proxies import ProxyPool, proxies_of
from gateway_core.redaction import Redactor, header_secrets, url_secrets
from gateway_core.types import Dialect, RequestContext, Usage

if TYPE_CHECKING:
    from gateway_core.config import DeploymentConfig
    from gateway_core.gateway import Gateway
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
    #: The client's own body when its dialect is not OpenAI's, so a provider speaking that dialect
    #: natively can forward it untranslated (answering with ``dialect`` set to it).
    client_body: dict[str, Any] | None = None


@dataclass(slots=True)
class CompletedResponse:
    """A complete (non-streamed) answer, already encoded as OpenAI JSON bytes."""

    body: bytes
    usage: Usage | None = None
    #: Upstream headers worth passing to the client (request id, rate limit hints).
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The wire format of ``body``: OpenAI's, or the client's own when a provider forwarded natively.
    dialect: Dialect = "openai"


class ChatStream:
    """A streamed chat completion: an async iterator of complete OpenAI SSE events (bytes).

    The iterator never raises: a failing upstream ends the stream with an OpenAI ``error`` event
    and sets :attr:`error`. :attr:`usage` holds the token counts once the stream is over.
    """

    usage: Usage | None = None
    error: GatewayError | None = None
    headers: Mapping[str, str] = {}
    #: The wire format of the events: OpenAI's, or the client's own when forwarded natively.
    dialect: Dialect = "openai"

    def __aiter__(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the upstream connection; called once when the stream ended or the client left."""

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """The stream as canonical chunk dicts, for clients of another dialect.

        The default decodes the OpenAI events of ``__aiter__``; streams that hold dicts anyway
        override it. Error events are not chunks: they end the iteration with :attr:`error` set.
        """
        from gateway_core.sse import SSEParser

        parser = SSEParser()
        async for raw in self:
            for _, data in parser.feed(raw):
                if data == "[DONE]":
                    continue
                chunk = orjson.loads(data)
                if isinstance(chunk, dict) and "error" not in chunk:
                    yield chunk


class WrappedStream(ChatStream):
    """A stream relaying another one (``inner``) with something changed on the way: its usage, error,
    headers and dialect are the inner stream's, and closing it closes the inner one."""

    def __init__(self, inner: ChatStream) -> None:
        self.inner = inner
        self.headers = inner.headers
        self.dialect = inner.dialect

    @property
    def usage(self) -> Usage | None:
        return self.inner.usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self.inner.usage = value

    @property
    def error(self) -> GatewayError | None:
        return self.inner.error

    @error.setter
    def error(self, value: GatewayError | None) -> None:
        self.inner.error = value

    def close(self) -> None:
        self.inner.close()


def deployment_redactor(
    deployment: DeploymentConfig,
    proxies: ProxyPool | None,
    config_secrets: Iterable[str],
    api_key_env: str | None,
) -> Redactor:
    """What a deployment keeps out of its error messages: the configuration's secrets, its keys and
    credentials (the environment's fallback key included), its extra header values and its proxies'
    credentials."""
    values: list[str | None] = [*config_secrets]
    if deployment.api_key is not None:
        values.append(deployment.api_key.get_secret_value())
    values += [item.api_key.get_secret_value() for item in deployment.credentials if item.api_key]
    if api_key_env:
        values.append(os.environ.get(api_key_env))
    values += header_secrets(deployment.headers.values())
    for url in proxies.urls if proxies is not None else ():
        values += url_secrets(url)
    return Redactor(values)


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
    #: Client dialects other than OpenAI's this provider forwards untranslated (it then answers in
    #: that dialect when ``ProviderCall.client_body`` is set).
    native_dialects: frozenset[str] = frozenset()

    def __init__(self, deployment: DeploymentConfig, options: BaseModel, http: HttpClient) -> None:
        self.deployment = deployment
        self.options = options
        self.http = http
        self.timeout = client_timeout(deployment.timeout)
        #: The deployment's credentials (one unless it lists ``credentials``); see :meth:`credential`.
        self.credentials = CredentialPool(self, deployment)
        #: The deployment's outbound proxies (None: direct connections).
        self.proxies = proxies_of(deployment, http)
        #: Scrubs this deployment's secrets from the upstream's error messages (see
        #: :mod:`gateway_core.redaction`).
        self.redact = deployment_redactor(deployment, self.proxies, http.secrets, self.api_key_env)

    def prepare_credential(self, credential: Credential) -> Any:
        """What calls with ``credential`` need, built once at start-up (a header dict, a token source).

        Stored as ``credential.auth``. Raise ``ConfigError`` for a credential that cannot work (a
        required key missing). The default prepares nothing.
        """
        return None

    async def credential(self, ctx: RequestContext) -> Credential:
        """The credential for one upstream request, chosen from the deployment's pool with its RPM
        taken and TPM checked; raises :class:`~gateway_core.errors.DeploymentLimited` when none has
        room. Call it once per upstream request, right before :meth:`send`."""
        return await self.credentials.acquire(ctx)

    async def send(
        self,
        url: str,
        payload: bytes,
        headers: Mapping[str, str],
        decode_error: ErrorDecoder = error_from_upstream,
    ) -> aiohttp.ClientResponse:
        """POST ``payload`` with this deployment's timeouts and proxies; error answers raise.

        See :func:`gateway_core.http.post`: the caller owns the returned response. When connecting
        to a proxy fails, the call is made again through the deployment's next proxy.
        """
        proxies = self.proxies
        failures = 0
        while True:
            proxy = proxies.current() if proxies is not None else None
            try:
                return await post(
                    self.http,
                    url,
                    payload,
                    headers=headers,
                    timeouts=self.timeout,
                    proxy=proxy,
                    provider=self.name,
                    decode_error=decode_error,
                )
            except GatewayError as error:
                if error.upstream_status is not None:  # built from the upstream's answer
                    self.redact.including(headers).error(error)
                    raise
                # Through a proxy, only connecting to the proxy fails this way: nothing was sent.
                if proxies is None or proxy is None or error.code != "upstream_unreachable":
                    raise
                proxies.failed(proxy)
                failures += 1
                if failures >= len(proxies):
                    raise

    def api_key(
        self, *fallback_env: str, required: bool | None = None, credential: Credential | None = None
    ) -> str | None:
        """The key of ``credential`` (its own, else the deployment's ``api_key``), else the first set
        of :attr:`api_key_env` and ``fallback_env``.

        With ``required`` (default: :attr:`requires_api_key`) a missing key is a start-up error.
        """
        if credential is not None and credential.api_key is not None:
            return credential.api_key
        if self.deployment.api_key is not None:
            return self.deployment.api_key.get_secret_value()
        names = [name for name in (self.api_key_env, *fallback_env) if name]
        for name in names:
            if value := os.environ.get(name):
                return value
        if self.requires_api_key if required is None else required:
            where = " or ".join(names) if names else "the deployment's api_key"
            raise ConfigError(f"provider {self.name!r} needs an API key: set api_key or {where}")
        return None

    async def chat(self, call: ProviderCall) -> CompletedResponse | ChatStream:
        raise NotImplementedError

    async def embeddings(self, call: ProviderCall) -> CompletedResponse:
        raise GatewayError(
            400,
            f"The provider {self.name!r} does not support embeddings.",
            param="model",
            code="unsupported_endpoint",
        )

    async def health_check(self) -> None:
        """Raise :class:`GatewayError` when the deployment cannot answer now (active health checks).

        The default sends the smallest valid chat request (one ``ping`` message, ``max_tokens: 1``)
        through :meth:`chat`, with a context of its own that belongs to no client request. Providers
        with a cheaper probe (a status endpoint, a model listing) override it. The caller bounds the
        time it may take.
        """
        model = self.deployment.model or ""
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
        }
        # No client request stands behind a check: the context has no gateway.
        ctx = RequestContext(
            cast("Gateway", None), f"health_{uuid.uuid4().hex}", "chat", "openai", {}, body=body, model=model
        )
        result = await self.chat(ProviderCall(ctx, body, None, model))
        if isinstance(result, ChatStream):
            result.close()

    async def count_tokens(self, call: ProviderCall) -> int:
        """Input tokens of a chat request, for ``/v1/messages/count_tokens``.

        The default is an estimate (about four characters per token of the messages, tools and
        system prompt); providers with a counting endpoint override it.
        """
        text = orjson.dumps([call.body.get("messages"), call.body.get("tools")])
        return max(1, len(text) // 4)

    def describe(self) -> dict[str, Any]:
        """What ``/-/plugins`` and health views may show; never secrets."""
        return {"provider": self.name, "model": self.deployment.model}
