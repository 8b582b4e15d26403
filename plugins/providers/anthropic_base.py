"""The provider base for upstreams that speak Anthropic's Messages API.

OpenAI-shaped requests are translated to Anthropic's form and answers back, streams event by event.
Shared by the ``anthropic`` and ``vertex`` plugins; it registers nothing itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway_core import (
    ChatStream,
    CompletedResponse,
    DeploymentConfig,
    GatewayError,
    HttpClient,
    Provider,
    ProviderCall,
    Usage,
)
from gateway_core.credentials import Credential
from gateway_core.dialects import anthropic as dialect
from gateway_core.http import ErrorDecoder, forwarded_headers, read_json
from gateway_core.redaction import Redactor
from gateway_core.sse import CheckedSSEStream, ChunkStream, SSEParser, ended_early, event_object

DEFAULT_VERSION = "2023-06-01"
#: Messages fields the count-tokens endpoint does not take.
NOT_COUNTED = (
    "max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences", "metadata", "service_tier",
)  # fmt: skip


class AnthropicOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: ``anthropic-version`` header.
    version: str = DEFAULT_VERSION
    #: ``anthropic-beta`` features to enable.
    beta: list[str] = Field(default_factory=list)
    #: ``max_tokens`` sent when the client gives none (Anthropic requires one).
    default_max_tokens: int = Field(4096, ge=1)


def wants_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _decode_error(status: int, body: bytes, headers: Mapping[str, str], provider: str) -> GatewayError:
    return dialect.decode_error(status, body, headers, provider=provider)


async def translate_stream(
    response: aiohttp.ClientResponse, decoder: Any, provider: str
) -> AsyncIterator[dict[str, Any]]:
    """Anthropic SSE events in, canonical chunks out.

    An event whose data is not a JSON object (one cut short by the end of the stream included) is a
    malformed event, and a stream that ends without ``message_stop`` ended early: both errors.
    """
    parser = SSEParser()
    finished = False
    async for raw in response.content.iter_any():
        for event, data in parser.feed(raw):
            if event == "message_stop":
                finished = True
            for chunk in decoder.feed(event, event_object(data, provider)):
                yield chunk
    for event, data in parser.flush():
        finished = finished or event == "message_stop"
        for chunk in decoder.feed(event, event_object(data, provider)):
            yield chunk
    if not finished:
        raise ended_early(provider)


def usage_from_anthropic(usage: Any) -> Usage | None:
    return Usage.from_openai(dialect.openai_usage(usage)) if isinstance(usage, Mapping) else None


def error_frame(error: GatewayError) -> bytes:
    return b"event: error\ndata: " + dialect.encode_error(error) + b"\n\n"


class AnthropicPassthroughStream(CheckedSSEStream):
    """Forwards an Anthropic stream to an Anthropic client event by event, reading only its usage.

    Each event's bytes are passed on untouched once its data parsed as a JSON object. An upstream
    ``error`` event is rebuilt from its type and message (secrets scrubbed). A malformed event, a
    stream that ends without ``message_stop`` or mid-event, resets or times out ends with an
    Anthropic ``error`` event instead of a silent truncation or a stream the client cannot parse.
    """

    dialect = "anthropic"

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        provider: str,
        headers: Mapping[str, str],
        redact: Redactor | None = None,
    ) -> None:
        self.response = response
        self.provider = provider
        self.headers = dict(headers)
        self.redact = redact or Redactor()
        self._usage: dict[str, Any] = {}
        self._complete = False

    def _error_frame(self, error: GatewayError) -> bytes:
        return error_frame(error)

    def _tap(self, event: bytes) -> bytes:
        """Check one event and read its usage; return it, or raise the client's error for a
        malformed one or an upstream ``error`` event."""
        name, data = _fields(event)
        if data is None:  # a comment
            return event
        payload = event_object(data, self.provider)
        if name == b"message_start":
            message = payload.get("message")
            self._add_usage(message.get("usage") if isinstance(message, dict) else None)
        elif name == b"message_delta":
            self._add_usage(payload.get("usage"))
        elif name == b"message_stop":
            self._complete = True
        elif name == b"error":
            raise self.redact.error(dialect.decode_stream_error(payload, provider=self.provider))
        return event

    def _add_usage(self, usage: Any) -> None:
        if isinstance(usage, dict) and usage:
            self._usage.update(usage)
            self.usage = usage_from_anthropic(self._usage)


def _fields(event: bytes) -> tuple[bytes | None, bytes | None]:
    """The ``event:`` name and the joined ``data:`` lines of one raw event (None when absent)."""
    name: bytes | None = None
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    return name, b"\n".join(data) if data else None


class AnthropicMessagesProvider(Provider):
    """Chat through a Messages-API endpoint; subclasses set :meth:`urls` and :meth:`request_headers`
    (both per credential, prepared by :meth:`~gateway_core.providers.Provider.prepare_credential`)."""

    Options: ClassVar[type[BaseModel]] = AnthropicOptions
    native_dialects: frozenset[str] = frozenset({"anthropic"})

    def __init__(self, deployment: DeploymentConfig, options: BaseModel, http: HttpClient) -> None:
        super().__init__(deployment, options, http)
        assert isinstance(options, AnthropicOptions)
        self.default_max_tokens = options.default_max_tokens

    def urls(self, credential: Credential, model: str, stream: bool) -> tuple[str, str]:
        """The messages URL and the count-tokens URL for ``model`` with ``credential``."""
        raise NotImplementedError

    async def request_headers(self, credential: Credential) -> Mapping[str, str]:
        raise NotImplementedError

    def error_decoder(self, credential: Credential, headers: Mapping[str, str]) -> ErrorDecoder:
        """How the upstream's error answers to a request sent with ``headers`` are read."""
        return _decode_error

    def encode(self, call: ProviderCall) -> dict[str, Any]:
        payload = dialect.encode_chat_request(
            call.body,
            model=call.upstream_model,
            drop_params=self.deployment.drop_params,
            default_max_tokens=self.default_max_tokens,
        )
        if call.ctx.stream:
            payload["stream"] = True
        else:
            payload.pop("stream", None)
        return payload

    async def _post(
        self, call: ProviderCall, payload: dict[str, Any], *, count: bool = False, native: bool = False
    ) -> aiohttp.ClientResponse:
        """Send ``payload`` to the messages (or, with ``count``, the count-tokens) endpoint."""
        credential = await self.credential(call.ctx)
        messages_url, count_url = self.urls(credential, call.upstream_model, call.ctx.stream and not count)
        headers = await self.request_headers(credential)
        if native and (client_beta := call.ctx.headers.get("anthropic-beta")):
            # On a pass-through the client's beta features travel with its body.
            own = headers.get("anthropic-beta")
            headers = {**headers, "anthropic-beta": f"{own},{client_beta}" if own else client_beta}
        return await self.send(
            count_url if count else messages_url,
            orjson.dumps(payload),
            headers,
            self.error_decoder(credential, headers),
        )

    def native_payload(self, call: ProviderCall) -> dict[str, Any]:
        """The Anthropic client's own body, for this deployment's model."""
        assert call.client_body is not None
        return {**call.client_body, "model": call.upstream_model}

    async def chat(self, call: ProviderCall) -> CompletedResponse | ChatStream:
        if call.client_body is not None and call.ctx.dialect == "anthropic":
            return await self._forward(call)
        response = await self._post(call, self.encode(call))
        headers = forwarded_headers(response.headers)
        if not call.ctx.stream:
            _, data = await read_json(response, self.name)
            answer = dialect.decode_chat_response(data, model=call.upstream_model)
            return CompletedResponse(orjson.dumps(answer), Usage.from_openai(answer.get("usage")), headers)
        decoder = dialect.StreamDecoder(model=call.upstream_model)
        return ChunkStream(
            translate_stream(response, decoder, self.name),
            provider=self.name,
            include_usage=wants_usage(call.body),
            on_close=response.release,
            headers=headers,
            redact=self.redact,
        )

    async def _forward(self, call: ProviderCall) -> CompletedResponse | ChatStream:
        """Same dialect on both sides: forward the client's body, answer the upstream's bytes."""
        response = await self._post(call, self.native_payload(call), native=True)
        headers = forwarded_headers(response.headers)
        if call.ctx.stream:
            return AnthropicPassthroughStream(response, self.name, headers, self.redact)
        body, data = await read_json(response, self.name)
        usage = usage_from_anthropic(data.get("usage")) if isinstance(data, dict) else None
        return CompletedResponse(body, usage, headers, dialect="anthropic")

    async def count_tokens(self, call: ProviderCall) -> int:
        native = call.client_body is not None and call.ctx.dialect == "anthropic"
        payload = self.native_payload(call) if native else self.encode(call)
        for field in NOT_COUNTED:
            payload.pop(field, None)
        response = await self._post(call, payload, count=True, native=native)
        _, data = await read_json(response, self.name)
        return int(data.get("input_tokens", 0)) if isinstance(data, dict) else 0
