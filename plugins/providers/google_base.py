"""The provider base for upstreams that speak Gemini's ``generateContent`` body format.

Requests are translated from the OpenAI form and answers back, streams event by event. Shared by the
``gemini`` (AI Studio) and ``vertex`` plugins, which differ in URLs and authentication; it registers
nothing itself.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import aiohttp
import orjson

from gateway_core import (
    ChatStream,
    CompletedResponse,
    GatewayError,
    Provider,
    ProviderCall,
    RequestContext,
    Usage,
)
from gateway_core.credentials import Credential
from gateway_core.dialects import gemini as dialect
from gateway_core.http import ErrorDecoder, forwarded_headers, read_json
from gateway_core.sse import ChunkStream, SSEParser, event_object


def wants_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _decode_error(status: int, body: bytes, headers: Mapping[str, str], provider: str) -> GatewayError:
    return dialect.decode_error(status, body, headers)


async def translate_stream(
    response: aiohttp.ClientResponse, decoder: Any, provider: str
) -> AsyncIterator[dict[str, Any]]:
    """Gemini's SSE events (each a partial ``GenerateContentResponse``) in, canonical chunks out.

    An event that is not a JSON object (one cut short by the end of the stream included) is a
    malformed event, an error object mid-stream the upstream's error, and a stream that ends before
    the answer is complete an error too (:meth:`~gateway_core.dialects.gemini.StreamDecoder.finish`).
    """
    parser = SSEParser()
    async for raw in response.content.iter_any():
        for _, data in parser.feed(raw):
            for chunk in decoder.feed(_event(data, provider)):
                yield chunk
    for _, data in parser.flush():  # the stream ended without the event's blank line
        for chunk in decoder.feed(_event(data, provider)):
            yield chunk
    for chunk in decoder.finish():
        yield chunk


def _event(data: str, provider: str) -> dict[str, Any]:
    payload = event_object(data, provider)
    if "error" in payload:
        error = payload["error"]
        status = error.get("code") if isinstance(error, dict) else None
        raise dialect.decode_error(status if isinstance(status, int) else 500, orjson.dumps(payload), {})
    return payload


class GoogleGenerativeProvider(Provider):
    """Shared flow of providers speaking Gemini's body format; subclasses set URLs and auth (both per
    credential, prepared by :meth:`~gateway_core.providers.Provider.prepare_credential`)."""

    supports_embeddings: ClassVar[bool] = True

    def model_url(self, credential: Credential, model: str, method: str) -> str:
        raise NotImplementedError

    async def request_headers(self, credential: Credential) -> Mapping[str, str]:
        raise NotImplementedError

    def error_decoder(self, credential: Credential, headers: Mapping[str, str]) -> ErrorDecoder:
        """How the upstream's error answers to a request sent with ``headers`` are read."""
        return _decode_error

    async def _post(
        self, ctx: RequestContext, model: str, method: str, payload: dict[str, Any], query: str = ""
    ) -> aiohttp.ClientResponse:
        """Call ``method`` of ``model`` with ``payload``, with a credential of the pool."""
        credential = await self.credential(ctx)
        headers = await self.request_headers(credential)
        url = self.model_url(credential, model, method) + query
        return await self.send(url, orjson.dumps(payload), headers, self.error_decoder(credential, headers))

    async def chat(self, call: ProviderCall) -> CompletedResponse | ChatStream:
        payload = dialect.encode_chat_request(call.body, drop_params=self.deployment.drop_params)
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        model = call.upstream_model
        if not call.ctx.stream:
            response = await self._post(call.ctx, model, "generateContent", payload)
            _, data = await read_json(response, self.name)
            answer = dialect.decode_chat_response(data, model=model, response_id=response_id)
            usage = Usage.from_openai(answer.get("usage"))
            return CompletedResponse(orjson.dumps(answer), usage, forwarded_headers(response.headers))
        response = await self._post(call.ctx, model, "streamGenerateContent", payload, "?alt=sse")
        decoder = dialect.StreamDecoder(model=model, response_id=response_id)
        return ChunkStream(
            translate_stream(response, decoder, self.name),
            provider=self.name,
            include_usage=wants_usage(call.body),
            on_close=response.release,
            headers=forwarded_headers(response.headers),
            redact=self.redact,
        )

    def count_tokens_payload(self, model: str, request: dict[str, Any]) -> dict[str, Any]:
        """``countTokens`` body: AI Studio takes the whole generate request (system and tools count)."""
        name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
        return {"generateContentRequest": {"model": name, **request}}

    async def count_tokens(self, call: ProviderCall) -> int:
        request = dialect.encode_chat_request(call.body, drop_params=True)
        request.pop("generationConfig", None)
        payload = self.count_tokens_payload(call.upstream_model, request)
        response = await self._post(call.ctx, call.upstream_model, "countTokens", payload)
        _, data = await read_json(response, self.name)
        return int(data.get("totalTokens", 0)) if isinstance(data, dict) else 0

    async def embeddings(self, call: ProviderCall) -> CompletedResponse:
        model = call.upstream_model
        payload = dialect.encode_embeddings_request(call.body, model=model)
        response = await self._post(call.ctx, model, "batchEmbedContents", payload)
        _, data = await read_json(response, self.name)
        texts = call.body.get("input")
        estimate = len(orjson.dumps(texts)) // 4
        answer = dialect.decode_embeddings_response(
            data, model=model, encoding_format=call.body.get("encoding_format"), prompt_tokens=estimate
        )
        return CompletedResponse(orjson.dumps(answer), Usage.from_openai(answer.get("usage")))
