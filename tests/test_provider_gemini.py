"""The ``gemini`` provider end to end: the ``openai`` SDK → the gateway → a strict fake Gemini API.

The fake rejects what Google rejects (roles other than ``user``/``model``, unknown fields, function
responses that do not answer the previous turn's calls, ``gemini-3`` histories without the thought
signatures it issued), so a translation mistake of the gateway fails these tests.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from gateway_core.testing import GatewayServer
from tests.chat_completions import finish_chunks, function_calls, streamed_text, user
from tests.fakes.gemini_upstream import FakeGemini, Reply
from tests.fakes.openai_upstream import embedding_for
from tests.one_call import one_call

WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def gemini_upstream() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def upstream(gemini_upstream: FakeGemini) -> Iterator[FakeGemini]:
    """The fake Gemini API, answering normally with nothing recorded at the test's start."""
    gemini_upstream.reset()
    yield gemini_upstream
    gemini_upstream.reset()


@pytest.fixture(scope="module")
def gemini_gateway(gemini_upstream: FakeGemini) -> Iterator[GatewayServer]:
    def deployment(model: str, **extra: Any) -> dict[str, Any]:
        entry = {
            "provider": "gemini",
            "base_url": gemini_upstream.url,
            "api_key": gemini_upstream.api_key,
            "model": model,
            **extra,
        }
        return {"deployments": [entry]}

    config = {
        "models": {
            "gemini": deployment("gemini-2.5-flash"),
            "gemini-3": deployment("gemini-3-pro-preview"),
            "gemini-lenient": deployment("gemini-2.5-flash", drop_params=True),
            "gemini-bad-key": deployment("gemini-2.5-flash", api_key="AIzaSyWrongKey-000000000000000000"),
            "gemini-typo": deployment("gemini-9-ultra"),
            "gemini-embed": deployment("text-embedding-004"),
        }
    }
    with GatewayServer(one_call(config)) as server:
        yield server


@pytest.fixture
def sdk(gemini_gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=gemini_gateway.base_url, api_key=gemini_gateway.api_key, max_retries=0, timeout=10
    ) as client:
        yield client


@pytest.fixture
async def async_sdk(gemini_gateway: GatewayServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gemini_gateway.base_url, api_key=gemini_gateway.api_key, max_retries=0, timeout=10
    ) as client:
        yield client


def sent(upstream: FakeGemini, method: str = "generateContent") -> dict[str, Any]:
    body: dict[str, Any] = upstream.requests_to(method)[-1].json
    return body


# --- answers -------------------------------------------------------------------------------------------


def test_a_chat_completion_is_answered_by_gemini(sdk: openai.OpenAI, upstream: FakeGemini) -> None:
    completion = sdk.chat.completions.create(model="gemini", messages=user("hello there"))

    assert completion.choices[0].message.content == "Echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gemini-2.5-flash"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)
    request = upstream.requests_to("generateContent")[-1]
    assert request.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert request.headers["x-goog-api-key"] == upstream.api_key
    assert "key" not in request.query  # the key travels in a header, never in the URL
    assert request.json == {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}


async def test_the_async_sdk_gets_the_same_answer(
    async_sdk: openai.AsyncOpenAI, upstream: FakeGemini
) -> None:
    completion = await async_sdk.chat.completions.create(model="gemini", messages=user("hi async"))

    assert completion.choices[0].message.content == "Echo: hi async"


def test_roles_become_user_and_model_turns(sdk: openai.OpenAI, upstream: FakeGemini) -> None:
    completion = sdk.chat.completions.create(
        model="gemini",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second"},
            {"role": "user", "content": "question"},
        ],
        temperature=0.3,
        max_tokens=50,
        stop=["END"],
    )

    assert completion.choices[0].message.content == "Echo: second question"
    body = sent(upstream)
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    assert [content["role"] for content in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][2]["parts"] == [{"text": "second"}, {"text": "question"}]
    assert body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 50, "stopSequences": ["END"]}


def test_an_image_url_becomes_file_data(sdk: openai.OpenAI, upstream: FakeGemini) -> None:
    sdk.chat.completions.create(
        model="gemini",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
                ],
            }
        ],
    )

    assert sent(upstream)["contents"][0]["parts"] == [
        {"text": "describe"},
        {"fileData": {"fileUri": "https://example.com/cat.png", "mimeType": "image/png"}},
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
    ]


@pytest.mark.parametrize(
    ("response_format", "config"),
    [
        ({"type": "json_object"}, {"responseMimeType": "application/json"}),
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "city",
                    "schema": {"type": "object", "properties": {"name": {"type": "string"}}},
                },
            },
            {
                "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        ),
    ],
    ids=["json-mode", "json-schema"],
)
def test_json_answers(
    sdk: openai.OpenAI, upstream: FakeGemini, response_format: Any, config: dict[str, Any]
) -> None:
    upstream.script(Reply(text='{"name": "Paris"}'))

    completion = sdk.chat.completions.create(
        model="gemini", messages=user("the capital of France"), response_format=response_format
    )

    content = completion.choices[0].message.content
    assert content is not None and json.loads(content) == {"name": "Paris"}
    assert sent(upstream)["generationConfig"] == config


def test_a_parameter_gemini_cannot_honour_is_a_400_unless_dropped(
    sdk: openai.OpenAI, upstream: FakeGemini
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="gemini", messages=user("hi"), logit_bias={"1": 5})
    assert caught.value.param == "logit_bias"
    assert upstream.requests == []

    completion = sdk.chat.completions.create(model="gemini-lenient", messages=user("hi"), logit_bias={"1": 5})
    assert completion.choices[0].message.content == "Echo: hi"
    assert "logit_bias" not in json.dumps(sent(upstream))


# --- streams -------------------------------------------------------------------------------------------


def test_a_stream_reassembles_and_finishes_once(sdk: openai.OpenAI, upstream: FakeGemini) -> None:
    upstream.behave(chunks=4)

    chunks = list(sdk.chat.completions.create(model="gemini", messages=user("stream me please"), stream=True))

    assert streamed_text(chunks) == "Echo: stream me please"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finish_chunks(chunks) == ["stop"]
    assert all(chunk.usage is None for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    request = upstream.requests_to("streamGenerateContent")[-1]
    assert request.query == {"alt": "sse"}


async def test_the_usage_chunk_comes_last_when_asked_for(
    async_sdk: openai.AsyncOpenAI, upstream: FakeGemini
) -> None:
    upstream.script(Reply(text="a cached answer", cached_tokens=2))

    stream = await async_sdk.chat.completions.create(
        model="gemini", messages=user("count me"), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    *body, last = chunks
    assert all(chunk.usage is None for chunk in body)
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (2, 3)
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 2
    assert streamed_text(chunks) == "a cached answer"


def test_max_tokens_finish_reason_is_length(sdk: openai.OpenAI, upstream: FakeGemini) -> None:
    upstream.script(Reply(text="cut short", finish_reason="MAX_TOKENS"))

    chunks = list(sdk.chat.completions.create(model="gemini", messages=user("hi"), max_tokens=2, stream=True))

    assert finish_chunks(chunks) == ["length"]


# --- tools ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool_choice", "calling"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
        ),
    ],
    ids=["auto", "none", "required", "named"],
)
def test_tool_choice_becomes_a_function_calling_mode(
    sdk: openai.OpenAI, upstream: FakeGemini, tool_choice: Any, calling: dict[str, Any]
) -> None:
    sdk.chat.completions.create(
        model="gemini", messages=user("hi"), tools=[WEATHER, TIME], tool_choice=tool_choice
    )

    body = sent(upstream)
    assert body["toolConfig"] == {"functionCallingConfig": calling}
    declarations = body["tools"][0]["functionDeclarations"]
    assert [d["name"] for d in declarations] == ["get_weather", "get_time"]
    assert declarations[0]["parametersJsonSchema"] == WEATHER["function"]["parameters"]


@pytest.mark.parametrize("model", ["gemini", "gemini-3"])
def test_a_parallel_function_call_round_trip(sdk: openai.OpenAI, upstream: FakeGemini, model: str) -> None:
    upstream.script(
        Reply(function_calls=[("get_weather", {"city": "Paris"}), ("get_time", {"city": "Paris"})])
    )
    messages = user("weather and time in Paris")

    first = sdk.chat.completions.create(model=model, messages=messages, tools=[WEATHER, TIME])

    assert first.choices[0].finish_reason == "tool_calls"
    calls = function_calls(first.choices[0].message)
    assert [call.function.name for call in calls] == ["get_weather", "get_time"]
    assert [json.loads(call.function.arguments) for call in calls] == [{"city": "Paris"}] * 2
    assert len({call.id for call in calls}) == 2
    assert all(call.id.startswith("call_") for call in calls)
    messages.append(first.choices[0].message.model_dump(exclude_none=True))  # type: ignore[arg-type]
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": '{"sky": "clear"}'})
    messages.append({"role": "tool", "tool_call_id": calls[1].id, "content": "14:05"})

    # The fake refuses function responses that do not answer the previous calls one for one and, for
    # gemini-3 models, a history whose first call lacks the thought signature it issued.
    second = sdk.chat.completions.create(model=model, messages=messages, tools=[WEATHER, TIME])

    assert second.choices[0].message.content == (
        'Results: get_weather: {"sky":"clear"}; get_time: {"output":"14:05"}'
    )
    contents = sent(upstream)["contents"]
    assert [content["role"] for content in contents] == ["user", "model", "user"]
    assert [part["functionResponse"]["name"] for part in contents[2]["parts"]] == ["get_weather", "get_time"]
    if model == "gemini-3":
        assert "thoughtSignature" in contents[1]["parts"][0]


def test_streamed_function_calls_carry_ids_that_round_trip(sdk: openai.OpenAI, upstream: FakeGemini) -> None:
    upstream.script(Reply(function_calls=[("get_weather", {"city": "Oslo"}), ("get_time", {"city": "Oslo"})]))

    chunks = list(
        sdk.chat.completions.create(
            model="gemini-3", messages=user("weather and time"), tools=[WEATHER, TIME], stream=True
        )
    )

    deltas = [call for chunk in chunks for choice in chunk.choices for call in choice.delta.tool_calls or []]
    assert [delta.index for delta in deltas] == [0, 1]
    assert all(delta.id and delta.function and delta.function.name for delta in deltas)
    ids = [str(delta.id) for delta in deltas]
    assert len(set(ids)) == 2
    assert finish_chunks(chunks) == ["tool_calls"]

    history: list[ChatCompletionMessageParam] = [
        *user("weather and time"),
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": ids[i],
                    "type": "function",
                    "function": {"name": delta.function.name, "arguments": delta.function.arguments},  # type: ignore[union-attr,typeddict-item]
                }
                for i, delta in enumerate(deltas)
            ],
        },
        {"role": "tool", "tool_call_id": ids[0], "content": "rain"},
        {"role": "tool", "tool_call_id": ids[1], "content": "09:00"},
    ]
    answer = sdk.chat.completions.create(model="gemini-3", messages=history, tools=[WEATHER, TIME])

    assert answer.choices[0].message.content == (
        'Results: get_weather: {"output":"rain"}; get_time: {"output":"09:00"}'
    )


# --- embeddings ----------------------------------------------------------------------------------------


def test_embeddings_in_the_sdks_default_base64(sdk: openai.OpenAI, upstream: FakeGemini) -> None:
    result = sdk.embeddings.create(model="gemini-embed", input=["first text", "second text"])

    assert [item.index for item in result.data] == [0, 1]
    assert result.data[0].embedding == embedding_for("first text", 768)
    assert result.data[1].embedding == embedding_for("second text", 768)
    assert result.usage.prompt_tokens > 0
    request = upstream.requests_to("batchEmbedContents")[-1]
    assert request.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert [r["content"]["parts"][0]["text"] for r in request.json["requests"]] == [
        "first text",
        "second text",
    ]


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_embeddings_as_floats_or_base64(
    sdk: openai.OpenAI, upstream: FakeGemini, encoding_format: str
) -> None:
    response = sdk.embeddings.with_raw_response.create(
        model="gemini-embed",
        input="one text",
        encoding_format=encoding_format,  # type: ignore[arg-type]
        dimensions=8,
    )

    embedding = response.http_response.json()["data"][0]["embedding"]
    if encoding_format == "base64":
        raw = base64.b64decode(embedding)
        embedding = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert embedding == embedding_for("one text", 8)
    assert sent(upstream, "batchEmbedContents")["requests"][0]["outputDimensionality"] == 8


# --- upstream failures ---------------------------------------------------------------------------------


def test_a_bad_gateway_key_is_a_502_that_does_not_leak_it(sdk: openai.OpenAI, upstream: FakeGemini) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gemini-bad-key", messages=user("hi"))

    assert caught.value.status_code == 502
    assert "API key" in caught.value.message
    assert "AIzaSyWrongKey" not in caught.value.response.text


def test_an_unknown_upstream_model_is_a_502(sdk: openai.OpenAI, upstream: FakeGemini) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gemini-typo", messages=user("hi"))

    assert caught.value.status_code == 502


def test_a_quota_error_is_a_429_with_retry_after_from_retry_info(
    sdk: openai.OpenAI, upstream: FakeGemini
) -> None:
    upstream.behave(status=429, retry_delay="16.2s")

    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="gemini", messages=user("hi"))

    assert caught.value.response.headers["retry-after"] == "17"
    assert "quota" in caught.value.message


@pytest.mark.parametrize(("status", "expected"), [(503, 503), (500, 502), (504, 504)])
def test_upstream_server_errors_are_mapped(
    sdk: openai.OpenAI, upstream: FakeGemini, status: int, expected: int
) -> None:
    upstream.behave(status=status)

    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="gemini", messages=user("hi"))

    assert caught.value.status_code == expected


def test_an_upstream_400_keeps_googles_message(sdk: openai.OpenAI, upstream: FakeGemini) -> None:
    upstream.behave(status=400, message="The input token count exceeds the maximum number of tokens allowed.")

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="gemini", messages=user("hi"))

    assert "exceeds the maximum number of tokens" in caught.value.message


@pytest.mark.parametrize("abrupt", [True, False], ids=["connection-reset", "body-ends-early"])
def test_a_stream_cut_mid_way_raises_instead_of_truncating(
    sdk: openai.OpenAI, upstream: FakeGemini, abrupt: bool
) -> None:
    upstream.behave(chunks=4, die_after=2, abrupt=abrupt)
    received: list[ChatCompletionChunk] = []

    stream = sdk.chat.completions.create(model="gemini", messages=user("a long answer please"), stream=True)
    with pytest.raises(openai.APIError):
        received.extend(stream)

    assert streamed_text(received) != ""
    assert finish_chunks(received) == []
