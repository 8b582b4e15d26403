"""The ``azure_openai`` provider end to end: the ``openai`` SDK → the gateway → a fake Azure OpenAI resource.

The fake wants what Azure wants (the ``api-key`` header, a supported ``api-version``, an existing
deployment) and streams what Azure streams, including the first chunk with empty ``choices`` that
OpenAI clients must never see.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionChunk

from gateway_core.testing import GatewayServer
from tests.chat_completions import user
from tests.fakes.azure_upstream import FILTERED_WORD, FakeAzureOpenAI
from tests.fakes.openai_upstream import embedding_for
from tests.one_call import one_call

API_VERSION = "2024-10-21"


@pytest.fixture(scope="module")
def azure_upstream() -> Iterator[FakeAzureOpenAI]:
    with FakeAzureOpenAI() as fake:
        yield fake


@pytest.fixture
def upstream(azure_upstream: FakeAzureOpenAI) -> Iterator[FakeAzureOpenAI]:
    azure_upstream.reset()
    yield azure_upstream
    azure_upstream.reset()


@pytest.fixture(scope="module")
def azure_gateway(azure_upstream: FakeAzureOpenAI) -> Iterator[GatewayServer]:
    def deployment(model: str, **extra: Any) -> dict[str, Any]:
        entry = {
            "provider": "azure_openai",
            "base_url": azure_upstream.url,
            "api_key": azure_upstream.api_key,
            "model": model,
            "options": {"api_version": API_VERSION},
            **extra,
        }
        return {"deployments": [entry]}

    config = {
        "models": {
            "gpt-4o": deployment("chat-4o"),
            "text-embedding-3-small": deployment("embed-small"),
            "gpt-4o-missing": deployment("chat-deleted"),
            "gpt-4o-old-api": deployment("chat-4o", options={"api_version": "2022-01-01"}),
            "gpt-4o-bad-key": deployment("chat-4o", api_key="ffffffffffffffffffffffffffffffff"),
        }
    }
    with GatewayServer(one_call(config)) as server:
        yield server


@pytest.fixture
def sdk(azure_gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=azure_gateway.base_url, api_key=azure_gateway.api_key, max_retries=0, timeout=10
    ) as client:
        yield client


@pytest.fixture
async def async_sdk(azure_gateway: GatewayServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=azure_gateway.base_url, api_key=azure_gateway.api_key, max_retries=0, timeout=10
    ) as client:
        yield client


def test_a_chat_completion_goes_to_the_azure_deployment(
    sdk: openai.OpenAI, upstream: FakeAzureOpenAI
) -> None:
    completion = sdk.chat.completions.create(model="gpt-4o", messages=user("hello azure"))

    assert completion.choices[0].message.content == "Echo: hello azure"
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.usage is not None and completion.usage.total_tokens == 2 + 3
    request = upstream.requests[-1]
    assert request.path == "/openai/deployments/chat-4o/chat/completions"
    assert request.query == {"api-version": API_VERSION}
    assert request.headers["api-key"] == upstream.api_key
    assert "authorization" not in request.headers
    assert request.json["messages"] == [{"role": "user", "content": "hello azure"}]


def test_a_stream_hides_azures_empty_first_chunk(sdk: openai.OpenAI, upstream: FakeAzureOpenAI) -> None:
    upstream.behave(chunks=4)

    chunks = list(sdk.chat.completions.create(model="gpt-4o", messages=user("stream me please"), stream=True))

    assert all(chunk.choices for chunk in chunks)  # neither the filter preamble nor the usage chunk
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "Echo: stream me please"
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    assert all(chunk.usage is None for chunk in chunks)
    # The gateway asked for usage on the client's behalf (to account the stream) and kept it to itself.
    assert upstream.requests[-1].json["stream_options"] == {"include_usage": True}


async def test_a_stream_with_usage_in_the_async_sdk(
    async_sdk: openai.AsyncOpenAI, upstream: FakeAzureOpenAI
) -> None:
    stream = await async_sdk.chat.completions.create(
        model="gpt-4o", messages=user("count this"), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    *body, last = chunks
    assert all(chunk.choices for chunk in body)
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (2, 3)
    assert "".join(c.choices[0].delta.content or "" for c in body) == "Echo: count this"


async def test_the_raw_stream_never_starts_with_an_empty_choices_chunk(
    azure_gateway: GatewayServer, upstream: FakeAzureOpenAI
) -> None:
    body = {"model": "gpt-4o", "messages": user("raw"), "stream": True}
    headers = {"Authorization": f"Bearer {azure_gateway.api_key}"}
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream(
            "POST", f"{azure_gateway.base_url}/chat/completions", json=body, headers=headers
        ) as response,
    ):
        text = (await response.aread()).decode()

    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    payloads = [orjson.loads(event) for event in events[:-1]]
    assert all(payload["choices"] for payload in payloads)
    assert "prompt_filter_results" not in text


def test_embeddings_in_the_sdks_default_base64(sdk: openai.OpenAI, upstream: FakeAzureOpenAI) -> None:
    result = sdk.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"], dimensions=16)

    assert [item.embedding for item in result.data] == [embedding_for("alpha", 16), embedding_for("beta", 16)]
    request = upstream.requests[-1]
    assert request.path == "/openai/deployments/embed-small/embeddings"
    assert request.query == {"api-version": API_VERSION}
    assert request.json["encoding_format"] == "base64"


def test_embeddings_as_floats(sdk: openai.OpenAI, upstream: FakeAzureOpenAI) -> None:
    response = sdk.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="alpha", encoding_format="float", dimensions=4
    )

    assert response.http_response.json()["data"][0]["embedding"] == embedding_for("alpha", 4)
    raw = base64.b64encode(struct.pack("<4f", *embedding_for("alpha", 4))).decode()
    assert raw not in response.http_response.text


def test_an_unknown_deployment_is_a_502(sdk: openai.OpenAI, upstream: FakeAzureOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gpt-4o-missing", messages=user("hi"))

    assert caught.value.status_code == 502
    assert "deployment" in caught.value.message
    assert upstream.requests[-1].path == "/openai/deployments/chat-deleted/chat/completions"


def test_an_unsupported_api_version_is_the_operators_problem(
    sdk: openai.OpenAI, upstream: FakeAzureOpenAI
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gpt-4o-old-api", messages=user("hi"))

    assert upstream.requests[-1].query == {"api-version": "2022-01-01"}
    assert caught.value.status_code == 502  # the client cannot fix the deployment's configuration
    assert "API version not supported" in caught.value.message


def test_a_refused_api_key_is_a_502(sdk: openai.OpenAI, upstream: FakeAzureOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gpt-4o-bad-key", messages=user("hi"))

    assert caught.value.status_code == 502
    assert "ffffffff" not in caught.value.response.text


def test_a_rate_limit_is_a_429_with_retry_after(sdk: openai.OpenAI, upstream: FakeAzureOpenAI) -> None:
    upstream.behave(
        status=429,
        message="Requests to the ChatCompletions_Create Operation have exceeded call rate limit. "
        "Please retry after 7 seconds.",
        headers={"retry-after": "7", "retry-after-ms": "7000"},
    )

    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="gpt-4o", messages=user("hi"))

    assert caught.value.response.headers["retry-after"] == "7"
    assert "retry after 7 seconds" in caught.value.message


def test_a_content_filter_refusal_is_a_400_with_azures_message(
    sdk: openai.OpenAI, upstream: FakeAzureOpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="gpt-4o", messages=user(f"tell me about {FILTERED_WORD}"))

    assert caught.value.code == "content_filter"
    assert "content management policy" in caught.value.message
    assert caught.value.param == "prompt"


def test_a_server_error_is_a_502(sdk: openai.OpenAI, upstream: FakeAzureOpenAI) -> None:
    upstream.behave(status=500)

    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gpt-4o", messages=user("hi"))

    assert caught.value.status_code == 502


def test_a_stream_cut_mid_way_raises(sdk: openai.OpenAI, upstream: FakeAzureOpenAI) -> None:
    upstream.behave(chunks=4, die_after=3)
    received: list[ChatCompletionChunk] = []

    stream = sdk.chat.completions.create(model="gpt-4o", messages=user("long"), stream=True)
    with pytest.raises(openai.APIError):
        received.extend(stream)

    assert all(chunk.choices for chunk in received)
    assert not any(chunk.choices[0].finish_reason for chunk in received)
