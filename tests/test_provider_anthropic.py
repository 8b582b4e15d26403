"""The ``anthropic`` provider end to end: the ``openai`` SDK → the gateway → a strict fake Anthropic API.

The fake validates every request as the real Messages API does (unknown fields, roles, ``tool_use`` /
``tool_result`` pairing), so a translation mistake of the gateway fails these tests with a 400.
"""

from __future__ import annotations

import json
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
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text_block, tool_use_block
from tests.one_call import one_call

UPSTREAM_MODEL = "claude-sonnet-4-5"

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
        "description": "The local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def anthropic_upstream() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def upstream(anthropic_upstream: FakeAnthropic) -> Iterator[FakeAnthropic]:
    """The fake Anthropic API, answering normally with nothing recorded at the test's start."""
    anthropic_upstream.reset()
    yield anthropic_upstream
    anthropic_upstream.reset()


@pytest.fixture(scope="module")
def claude_gateway(anthropic_upstream: FakeAnthropic) -> Iterator[GatewayServer]:
    def deployment(**extra: Any) -> dict[str, Any]:
        entry = {
            "provider": "anthropic",
            "base_url": anthropic_upstream.url,
            "api_key": anthropic_upstream.api_key,
            "model": UPSTREAM_MODEL,
            **extra,
        }
        return {"deployments": [entry]}

    config = {
        "models": {
            "claude": deployment(),
            "claude-lenient": deployment(drop_params=True),
            "claude-bad-key": deployment(api_key="sk-ant-wrong-key-000000000000"),
            "claude-typo": deployment(model="claud-sonnet"),
        }
    }
    with GatewayServer(one_call(config)) as server:
        yield server


@pytest.fixture
def sdk(claude_gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=claude_gateway.base_url, api_key=claude_gateway.api_key, max_retries=0, timeout=10
    ) as client:
        yield client


@pytest.fixture
async def async_sdk(claude_gateway: GatewayServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=claude_gateway.base_url, api_key=claude_gateway.api_key, max_retries=0, timeout=10
    ) as client:
        yield client


def sent(upstream: FakeAnthropic) -> dict[str, Any]:
    """The body of the last request the fake received on ``/v1/messages``."""
    body: dict[str, Any] = upstream.requests_to("/v1/messages")[-1].json
    return body


# --- answers -------------------------------------------------------------------------------------------


def test_a_chat_completion_is_answered_by_claude(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    completion = sdk.chat.completions.create(model="claude", messages=user("hello there"))

    assert completion.choices[0].message.content == "Echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.object == "chat.completion"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)
    assert completion.usage.total_tokens == 5
    request = upstream.requests_to("/v1/messages")[-1]
    assert request.headers["x-api-key"] == upstream.api_key
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.json == {
        "model": UPSTREAM_MODEL,
        "max_tokens": 4096,  # Anthropic requires one; the deployment's default fills it in
        "messages": [{"role": "user", "content": "hello there"}],
    }


async def test_the_async_sdk_gets_the_same_answer(
    async_sdk: openai.AsyncOpenAI, upstream: FakeAnthropic
) -> None:
    completion = await async_sdk.chat.completions.create(model="claude", messages=user("hi async"))

    assert completion.choices[0].message.content == "Echo: hi async"
    assert sent(upstream)["model"] == UPSTREAM_MODEL


def test_system_prompts_and_a_multi_turn_conversation(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    completion = sdk.chat.completions.create(
        model="claude",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": "second question"},
        ],
    )

    assert completion.choices[0].message.content == "Echo: second question"
    body = sent(upstream)
    assert body["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Answer in English."},
    ]
    assert body["messages"] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]


@pytest.mark.parametrize(
    ("url", "source"),
    [
        (
            f"data:image/png;base64,{PNG_BASE64}",
            {"type": "base64", "media_type": "image/png", "data": PNG_BASE64},
        ),
        ("https://example.com/cat.jpg", {"type": "url", "url": "https://example.com/cat.jpg"}),
    ],
    ids=["base64-data-url", "https-url"],
)
def test_images_reach_claude_as_image_blocks(
    sdk: openai.OpenAI, upstream: FakeAnthropic, url: str, source: dict[str, Any]
) -> None:
    completion = sdk.chat.completions.create(
        model="claude",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is in this picture"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    )

    assert completion.choices[0].message.content == "Echo: what is in this picture"
    assert sent(upstream)["messages"][0]["content"] == [
        {"type": "text", "text": "what is in this picture"},
        {"type": "image", "source": source},
    ]


# --- tools ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool_choice", "encoded", "prompt", "called"),
    [
        ("auto", {"type": "auto"}, "please call tool get_time", "get_time"),
        ("none", {"type": "none"}, "please call tool get_time", None),
        ("required", {"type": "any"}, "what now", "get_weather"),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "tool", "name": "get_time"},
            "what now",
            "get_time",
        ),
    ],
    ids=["auto", "none", "required", "named"],
)
def test_tool_choice(
    sdk: openai.OpenAI,
    upstream: FakeAnthropic,
    tool_choice: Any,
    encoded: dict[str, Any],
    prompt: str,
    called: str | None,
) -> None:
    completion = sdk.chat.completions.create(
        model="claude", messages=user(prompt), tools=[WEATHER, TIME], tool_choice=tool_choice
    )

    body = sent(upstream)
    assert body["tool_choice"] == encoded
    assert [tool["name"] for tool in body["tools"]] == ["get_weather", "get_time"]
    assert body["tools"][0]["input_schema"] == WEATHER["function"]["parameters"]
    choice = completion.choices[0]
    if called is None:
        assert choice.finish_reason == "stop"
        assert choice.message.tool_calls is None
    else:
        assert choice.finish_reason == "tool_calls"
        [call] = function_calls(choice.message)
        assert call.type == "function"
        assert call.function.name == called
        assert json.loads(call.function.arguments) == {"city": "test"}


def test_a_parallel_tool_call_round_trip(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    messages: list[ChatCompletionMessageParam] = user("call tool get_weather and get_time for Paris")

    first = sdk.chat.completions.create(model="claude", messages=messages, tools=[WEATHER, TIME])

    assert first.choices[0].finish_reason == "tool_calls"
    calls = function_calls(first.choices[0].message)
    assert [call.function.name for call in calls] == ["get_weather", "get_time"]
    assert len({call.id for call in calls}) == 2
    messages.append(first.choices[0].message.model_dump(exclude_none=True))  # type: ignore[arg-type]
    results = {"get_weather": "sunny, 21 C", "get_time": "14:05"}
    for call in calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": results[call.function.name]})

    # The fake answers 400 unless each tool_result answers a tool_use of the previous assistant turn.
    second = sdk.chat.completions.create(model="claude", messages=messages, tools=[WEATHER, TIME])

    assert second.choices[0].message.content == "Tool result: sunny, 21 C | 14:05"
    assert second.choices[0].finish_reason == "stop"
    turns = sent(upstream)["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert [block["type"] for block in turns[1]["content"]] == ["tool_use", "tool_use"]
    assert [block["tool_use_id"] for block in turns[2]["content"]] == [call.id for call in calls]


def test_a_tool_result_for_an_unknown_call_is_refused_before_the_upstream(
    sdk: openai.OpenAI, upstream: FakeAnthropic
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="claude",
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "call_nowhere", "content": "orphan"},
            ],
        )

    assert caught.value.status_code == 400
    assert upstream.requests_to("/v1/messages") == []


def test_streamed_tool_calls_have_stable_indices_and_ids(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    upstream.behave(chunks=3)

    chunks = list(
        sdk.chat.completions.create(
            model="claude",
            messages=user("call tool get_weather get_time"),
            tools=[WEATHER, TIME],
            stream=True,
        )
    )

    deltas = [call for chunk in chunks for choice in chunk.choices for call in choice.delta.tool_calls or []]
    by_index: dict[int, list[Any]] = {}
    for delta in deltas:
        by_index.setdefault(delta.index, []).append(delta)
    assert sorted(by_index) == [0, 1]
    ids = []
    for index, pieces in by_index.items():
        assert pieces[0].id is not None and pieces[0].function is not None
        assert [p.id for p in pieces[1:]] == [None] * (len(pieces) - 1)  # the id comes once, first
        assert pieces[0].function.name == ("get_weather", "get_time")[index]
        assert len(pieces) > 2  # the arguments arrived in pieces
        arguments = "".join((p.function.arguments or "") for p in pieces if p.function is not None)
        assert json.loads(arguments) == {"city": "test"}
        ids.append(pieces[0].id)
    assert ids == ["toolu_fake00_get_weather", "toolu_fake01_get_time"]
    assert finish_chunks(chunks) == ["tool_calls"]


def test_a_streamed_tool_call_without_arguments_has_an_empty_object(
    sdk: openai.OpenAI, upstream: FakeAnthropic
) -> None:
    ping: ChatCompletionToolParam = {
        "type": "function",
        "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}},
    }

    chunks = list(
        sdk.chat.completions.create(
            model="claude", messages=user("call tool ping"), tools=[ping], stream=True
        )
    )

    deltas = [call for chunk in chunks for choice in chunk.choices for call in choice.delta.tool_calls or []]
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function is not None)
    assert json.loads(arguments) == {}
    assert finish_chunks(chunks) == ["tool_calls"]


def test_parallel_tool_calls_false_asks_for_one_call(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    sdk.chat.completions.create(
        model="claude", messages=user("hi"), tools=[WEATHER, TIME], parallel_tool_calls=False
    )

    assert sent(upstream)["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_streamed_tool_calls_in_the_async_sdk(
    async_sdk: openai.AsyncOpenAI, upstream: FakeAnthropic
) -> None:
    stream = await async_sdk.chat.completions.create(
        model="claude", messages=user("call tool get_time"), tools=[WEATHER, TIME], stream=True
    )
    chunks = [chunk async for chunk in stream]

    calls = [call for chunk in chunks for choice in chunk.choices for call in choice.delta.tool_calls or []]
    assert {call.index for call in calls} == {0}
    assert calls[0].function is not None and calls[0].function.name == "get_time"
    assert finish_chunks(chunks) == ["tool_calls"]


# --- request parameters ------------------------------------------------------------------------------


def test_json_schema_response_format_becomes_structured_output(
    sdk: openai.OpenAI, upstream: FakeAnthropic
) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }

    completion = sdk.chat.completions.create(
        model="claude",
        messages=user("the biggest city"),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
    )

    content = completion.choices[0].message.content
    assert content is not None
    assert json.loads(content) == {"city": "test", "population": 1}
    assert sent(upstream)["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_stop_sequences(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    completion = sdk.chat.completions.create(
        model="claude", messages=user("one two STOP three"), stop=["STOP", "END"]
    )

    assert completion.choices[0].message.content == "Echo: one two "
    assert completion.choices[0].finish_reason == "stop"
    assert sent(upstream)["stop_sequences"] == ["STOP", "END"]


def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    sdk: openai.OpenAI, upstream: FakeAnthropic
) -> None:
    completion = sdk.chat.completions.create(
        model="claude", messages=user("a rather long question indeed"), max_completion_tokens=3
    )

    assert completion.choices[0].message.content == "Echo: a rather"
    assert completion.choices[0].finish_reason == "length"
    assert sent(upstream)["max_tokens"] == 3


def test_sampling_parameters_are_passed_on(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    sdk.chat.completions.create(
        model="claude", messages=user("hi"), temperature=0.2, top_p=0.9, user="customer-7"
    )

    body = sent(upstream)
    assert (body["temperature"], body["top_p"]) == (0.2, 0.9)
    assert body["metadata"] == {"user_id": "customer-7"}


def test_usage_counts_cached_prompt_tokens(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    upstream.behave(cache_read_input_tokens=40, cache_creation_input_tokens=10)

    completion = sdk.chat.completions.create(model="claude", messages=user("hello cache"))

    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == 2 + 40 + 10  # every input token: uncached, cache reads and writes
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize(
    ("parameter", "value"), [("logit_bias", {"50256": -100}), ("n", 2), ("seed", 7)], ids=str
)
def test_a_parameter_claude_cannot_honour_is_a_400_naming_it(
    sdk: openai.OpenAI, upstream: FakeAnthropic, parameter: str, value: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="claude", messages=user("hi"), **{parameter: value})

    assert caught.value.param == parameter
    assert parameter in caught.value.message
    assert upstream.requests_to("/v1/messages") == []


def test_drop_params_drops_what_claude_cannot_honour(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    completion = sdk.chat.completions.create(
        model="claude-lenient", messages=user("hi"), logit_bias={"50256": -100}, n=1, seed=7, temperature=1.5
    )

    assert completion.choices[0].message.content == "Echo: hi"
    body = sent(upstream)
    assert not {"logit_bias", "n", "seed", "temperature"} & set(body)


# --- streams -------------------------------------------------------------------------------------------


def test_a_stream_reassembles_and_finishes_once(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    upstream.behave(chunks=4)

    chunks = list(sdk.chat.completions.create(model="claude", messages=user("stream me please"), stream=True))

    assert streamed_text(chunks) == "Echo: stream me please"
    assert len([c for c in chunks if any(choice.delta.content for choice in c.choices)]) == 4
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finish_chunks(chunks) == ["stop"]
    assert all(chunk.usage is None for chunk in chunks)  # not asked for
    assert len({chunk.id for chunk in chunks}) == 1
    assert sent(upstream)["stream"] is True


def test_the_usage_chunk_comes_last_and_only_when_asked_for(
    sdk: openai.OpenAI, upstream: FakeAnthropic
) -> None:
    upstream.behave(cache_read_input_tokens=3)

    chunks = list(
        sdk.chat.completions.create(
            model="claude",
            messages=user("count me"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    *body, last = chunks
    assert all(chunk.usage is None for chunk in body)
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (2 + 3, 3)
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 3
    assert finish_chunks(chunks) == ["stop"]


async def test_an_async_stream(async_sdk: openai.AsyncOpenAI, upstream: FakeAnthropic) -> None:
    stream = await async_sdk.chat.completions.create(
        model="claude", messages=user("async stream"), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert streamed_text(chunks) == "Echo: async stream"
    assert chunks[-1].usage is not None
    assert finish_chunks(chunks) == ["stop"]


def test_a_stream_cut_by_max_tokens_finishes_with_length(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="claude", messages=user("many many words here"), max_tokens=2, stream=True
        )
    )

    assert streamed_text(chunks) == "Echo: many"
    assert finish_chunks(chunks) == ["length"]


def test_scripted_text_and_tool_use_in_one_answer(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    upstream.enqueue(
        Reply(
            [text_block("Let me look."), tool_use_block("get_weather", {"city": "Oslo"}, "toolu_x1")],
            stop_reason="tool_use",
        )
    )

    completion = sdk.chat.completions.create(model="claude", messages=user("weather?"), tools=[WEATHER])

    message = completion.choices[0].message
    assert message.content == "Let me look."
    [call] = function_calls(message)
    assert call.id == "toolu_x1"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}


# --- upstream failures ---------------------------------------------------------------------------------


def test_the_upstream_refusing_the_gateways_key_is_a_502(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="claude-bad-key", messages=user("hi"))

    assert caught.value.status_code == 502
    assert "credentials" in caught.value.message
    assert "sk-ant-wrong" not in caught.value.response.text


def test_an_unknown_upstream_model_is_a_502(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="claude-typo", messages=user("hi"))

    assert caught.value.status_code == 502


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [
        (401, "authentication_error", 502),
        (403, "permission_error", 502),
        (404, "not_found_error", 502),
        (500, "api_error", 502),
        (529, "overloaded_error", 503),
    ],
)
def test_upstream_error_statuses_are_mapped(
    sdk: openai.OpenAI, upstream: FakeAnthropic, status: int, error_type: str, expected: int
) -> None:
    upstream.behave(status=status, error_type=error_type, message="something upstream")

    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="claude", messages=user("hi"))

    assert caught.value.status_code == expected
    assert caught.value.response.headers["content-type"] == "application/json"
    assert caught.value.body is not None


def test_an_upstream_rate_limit_keeps_its_retry_after(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    upstream.behave(
        status=429,
        error_type="rate_limit_error",
        message="Number of request tokens has exceeded your per-minute rate limit",
        headers={"retry-after": "17"},
    )

    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="claude", messages=user("hi"))

    assert caught.value.response.headers["retry-after"] == "17"
    assert "rate limit" in caught.value.message


def test_an_upstream_400_keeps_its_status_and_message(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    upstream.behave(status=400, error_type="invalid_request_error", message="prompt is too long")

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="claude", messages=user("hi"))

    assert "prompt is too long" in caught.value.message


def test_an_error_event_mid_stream_raises_in_the_sdk(sdk: openai.OpenAI, upstream: FakeAnthropic) -> None:
    upstream.behave(stream_error="overloaded_error", stream_error_after=4, chunks=4)
    received: list[ChatCompletionChunk] = []

    stream = sdk.chat.completions.create(model="claude", messages=user("a long answer"), stream=True)
    with pytest.raises(openai.APIError) as caught:
        received.extend(stream)

    assert streamed_text(received) != ""  # what came before the error was delivered
    assert finish_chunks(received) == []
    assert "overloaded" in caught.value.message


@pytest.mark.parametrize("abrupt", [True, False], ids=["connection-reset", "body-ends-early"])
def test_a_stream_cut_mid_way_raises_instead_of_truncating(
    sdk: openai.OpenAI, upstream: FakeAnthropic, abrupt: bool
) -> None:
    upstream.behave(die_after=5, abrupt=abrupt, chunks=4)
    received: list[ChatCompletionChunk] = []

    stream = sdk.chat.completions.create(model="claude", messages=user("a long answer"), stream=True)
    with pytest.raises(openai.APIError) as caught:
        received.extend(stream)

    assert finish_chunks(received) == []
    assert "upstream" in caught.value.message


async def test_a_stream_cut_mid_way_in_the_async_sdk(
    async_sdk: openai.AsyncOpenAI, upstream: FakeAnthropic
) -> None:
    upstream.behave(die_after=4, chunks=4)

    stream = await async_sdk.chat.completions.create(model="claude", messages=user("hi"), stream=True)
    with pytest.raises(openai.APIError):
        async for _chunk in stream:
            pass
