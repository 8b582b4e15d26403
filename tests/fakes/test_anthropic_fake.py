"""The fake Anthropic upstream, driven by the official ``anthropic`` SDK: its shapes are the real API's."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from gateway_core.dialects.anthropic import StreamDecoder, decode_chat_response, encode_chat_request
from gateway_core.sse import SSEParser
from tests.fakes.anthropic_upstream import (
    DEFAULT_API_KEY,
    FakeAnthropic,
    Reply,
    text_block,
    tool_use_block,
)

MODEL = "claude-haiku-4-5"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather of a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}}}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeAnthropic) -> Iterator[FakeAnthropic]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def client(server: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key=DEFAULT_API_KEY, max_retries=0, timeout=10) as sdk:
        yield sdk


HEADERS = {
    "x-api-key": DEFAULT_API_KEY,
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}


def raw_post(fake: FakeAnthropic, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    try:
        connection.request("POST", "/v1/messages", body=orjson.dumps(body), headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def event_names(raw: bytes) -> list[str]:
    return [line[7:] for line in raw.decode().split("\n") if line.startswith("event: ")]


def test_create_echoes_the_last_user_text_with_usage(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello there"}],
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Echo: Hello there"
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert message.usage.input_tokens == 4
    assert message.usage.output_tokens == 3
    recorded = fake.requests[-1]
    assert recorded.path == "/v1/messages"
    assert recorded.headers["anthropic-version"]
    assert recorded.json["system"] == "Be brief."


def test_stream_accumulates_to_the_same_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hello there friend"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Echo: Hello there friend"
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4


def test_raw_stream_has_anthropics_event_sequence(fake: FakeAnthropic) -> None:
    fake.behave(chunks=2)
    status, raw = raw_post(
        fake,
        {
            "model": MODEL,
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "Hi you"}],
        },
        HEADERS,
    )
    assert status == 200
    assert event_names(raw) == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert b'event: ping\ndata: {"type":"ping"}\n\n' in raw


def test_tools_are_called_on_request_and_results_answered(client: anthropic.Anthropic) -> None:
    first = client.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=[WEATHER],
        messages=[{"role": "user", "content": "please call tool"}],
    )
    assert first.stop_reason == "tool_use"
    call = first.content[0]
    assert call.type == "tool_use"
    assert (call.name, call.input) == ("get_weather", {"city": "test"})
    second = client.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "please call tool"},
            {
                "role": "assistant",
                "content": [block.model_dump(exclude_none=True) for block in first.content],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}],
            },
        ],
    )
    assert second.content[0].type == "text"
    assert second.content[0].text == "Tool result: Sunny"


def test_parallel_tool_calls_stream_with_input_json_deltas(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=64,
        tools=[WEATHER, TIME],
        messages=[{"role": "user", "content": "call tool get_weather and get_time"}],
    ) as stream:
        final = stream.get_final_message()
    assert [(block.type, getattr(block, "name", None)) for block in final.content] == [
        ("tool_use", "get_weather"),
        ("tool_use", "get_time"),
    ]
    assert [getattr(block, "input", None) for block in final.content] == [{"city": "test"}, {"zone": "test"}]


def test_scripted_replies_are_answered_in_order(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.enqueue(
        Reply(
            [text_block("Let me look."), tool_use_block("get_weather", {"city": "Paris"})],
            stop_reason="tool_use",
        ),
        Reply([text_block("It is sunny.")], usage={"output_tokens": 9}),
    )
    first = client.messages.create(
        model=MODEL, max_tokens=64, tools=[WEATHER], messages=[{"role": "user", "content": "Weather?"}]
    )
    assert [block.type for block in first.content] == ["text", "tool_use"]
    second = client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Again"}]
    )
    assert second.content[0].type == "text"
    assert second.content[0].text == "It is sunny."
    assert second.usage.output_tokens == 9


def test_stop_sequences_and_max_tokens(client: anthropic.Anthropic) -> None:
    stopped = client.messages.create(
        model=MODEL,
        max_tokens=64,
        stop_sequences=["there"],
        messages=[{"role": "user", "content": "Hello there"}],
    )
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "there")
    cut = client.messages.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "one two three"}]
    )
    assert cut.stop_reason == "max_tokens"
    assert cut.content[0].type == "text"
    assert cut.content[0].text == "Echo: one"


def test_prompt_cache_counts_are_reported(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.behave(cache_read_input_tokens=100, cache_creation_input_tokens=20)
    message = client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hi"}])
    assert message.usage.cache_read_input_tokens == 100
    assert message.usage.cache_creation_input_tokens == 20


def test_count_tokens(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "a b c"}])
    assert counted.input_tokens == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"extra_body": {"frequency_penalty": 1}}, "frequency_penalty: Extra inputs are not permitted"),
        ({"extra_body": {"temperature": 1.5}}, "temperature: Input should be less than or equal to 1"),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "messages.0.role: Input should be 'user', 'assistant' or 'system'",
        ),
        (
            {
                "messages": [
                    {
                        "role": "system",
                        "content": [
                            {"type": "image", "source": {"type": "url", "url": "https://x.io/a.png"}}
                        ],
                    },
                    {"role": "user", "content": "Hi"},
                ]
            },
            "messages.0.content.0: Input tag 'image'",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
            "messages: text content blocks must be non-empty",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {
                        "role": "assistant",
                        "content": [tool_use_block("get_weather", {"city": "Paris"}, "toolu_1")],
                    },
                    {"role": "user", "content": "go on"},
                ]
            },
            "messages.2: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1.",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}],
                    }
                ]
            },
            "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_9.",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {
                        "role": "assistant",
                        "content": [tool_use_block("get_weather", {"city": "Paris"}, "toolu_1")],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Here:"},
                            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"},
                        ],
                    },
                ]
            },
            "`tool_result` blocks must come first",
        ),
        ({"tool_choice": {"type": "tool", "name": "nope"}}, "Tool 'nope' not found"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "x", "input": {}}]}
                ]
            },
            "messages.0.content.0: Input tag 'tool_use'",
        ),
    ],
)
def test_invalid_requests_are_rejected_like_the_real_api(
    client: anthropic.Anthropic, kwargs: dict[str, Any], message: str
) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 64,
        "tools": [WEATHER],
        "messages": [{"role": "user", "content": "Hi"}],
    }
    request.update(kwargs)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(**request)
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert message in caught.value.body["error"]["message"]  # type: ignore[index]


def test_missing_max_tokens_and_headers(fake: FakeAnthropic) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    status, raw = raw_post(fake, body, {"x-api-key": DEFAULT_API_KEY, "anthropic-version": "2023-06-01"})
    assert (status, orjson.loads(raw)["error"]["message"]) == (400, "max_tokens: Field required")
    status, raw = raw_post(fake, {**body, "max_tokens": 5}, {"x-api-key": DEFAULT_API_KEY})
    assert (status, orjson.loads(raw)["error"]["message"]) == (400, "anthropic-version: header is required")
    status, raw = raw_post(fake, {**body, "max_tokens": 5}, {"anthropic-version": "2023-06-01"})
    assert status == 401
    assert orjson.loads(raw)["error"] == {
        "type": "authentication_error",
        "message": "x-api-key header is required",
    }


def test_wrong_key_is_an_authentication_error(server: FakeAnthropic) -> None:
    with (
        anthropic.Anthropic(base_url=server.url, api_key="sk-ant-wrong", max_retries=0) as sdk,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        sdk.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])


@pytest.mark.parametrize(
    ("status", "error_type", "exception"),
    [
        (429, "rate_limit_error", anthropic.RateLimitError),
        (529, "overloaded_error", anthropic.OverloadedError),
        (500, "api_error", anthropic.InternalServerError),
        (413, "request_too_large", anthropic.ContentTooLargeError),
    ],
)
def test_injected_error_statuses_raise_the_sdks_classes(
    fake: FakeAnthropic, client: anthropic.Anthropic, status: int, error_type: str, exception: type[Exception]
) -> None:
    fake.behave(status=status, error_type=error_type, message="Injected.", headers={"retry-after": "7"})
    with pytest.raises(exception) as caught:
        client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    error = caught.value
    assert isinstance(error, anthropic.APIStatusError)
    assert error.status_code == status
    assert error.response.headers["retry-after"] == "7"
    assert error.body == {
        "type": "error",
        "error": {"type": error_type, "message": "Injected."},
        "request_id": error.response.headers["request-id"],
    }


def test_overloaded_is_an_internal_server_error_to_the_sdk() -> None:
    assert issubclass(anthropic.OverloadedError, anthropic.InternalServerError)


def test_error_event_mid_stream(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.behave(stream_error="overloaded_error", stream_error_after=3)
    received = []
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "a b c"}]
        ) as stream,
    ):
        received.extend(event.type for event in stream)
    assert received[0] == "message_start"
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert fake.completed_streams == 0


def test_connection_dropped_mid_stream(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    """The SDK hands over the events that arrived, then raises its connection error: not a timeout, not
    an API error, and caused by the body ending before its last chunk."""
    fake.behave(die_after=4)
    received: list[str] = []
    with (
        pytest.raises(anthropic.APIConnectionError) as raised,
        client.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "a b c"}]
        ) as stream,
    ):
        received.extend(event.type for event in stream)  # kept up to the error
    assert not isinstance(raised.value, anthropic.APITimeoutError)
    assert isinstance(raised.value.__cause__, httpx2.RemoteProtocolError)
    assert received[:2] == ["message_start", "content_block_start"]
    assert "content_block_delta" in received
    assert "message_stop" not in received
    assert fake.completed_streams == 0


def test_a_dropped_stream_stops_before_the_last_chunk(fake: FakeAnthropic) -> None:
    """As a real server that goes away: the connection closes inside the chunked body, after the events
    already sent, and without the zero-length chunk that would end the body cleanly."""
    fake.behave(die_after=4)
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "a b c"}],
    }
    with pytest.raises(http.client.IncompleteRead) as raised:
        raw_post(fake, body, HEADERS)
    assert event_names(raised.value.partial) == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
    ]


async def test_async_client_streams(server: FakeAnthropic) -> None:
    server.reset()
    async with (
        anthropic.AsyncAnthropic(base_url=server.url, api_key=DEFAULT_API_KEY, max_retries=0) as sdk,
        sdk.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "async hello"}]
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert final.content[0].type == "text"
    assert final.content[0].text == "Echo: async hello"
    assert server.completed_streams == 1


def test_the_gateway_dialect_round_trips_through_the_fake(fake: FakeAnthropic) -> None:
    """A canonical conversation with parallel tool calls, encoded, answered by the fake, decoded back."""
    canonical = {
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather and time?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
            {"role": "user", "content": "Now call tool get_weather and get_time again"},
        ],
        "tools": [
            {"type": "function", "function": {"name": tool["name"], "parameters": tool["input_schema"]}}
            for tool in (WEATHER, TIME)
        ],
        "stream": True,
    }
    status, raw = raw_post(fake, encode_chat_request(canonical, model=MODEL), HEADERS)
    assert status == 200, raw
    decoder = StreamDecoder(model="claude")
    chunks = [c for event, data in SSEParser().feed(raw) for c in decoder.feed(event, orjson.loads(data))]
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls", []):
                entry = calls.setdefault(call["index"], {"name": "", "arguments": ""})
                entry["name"] += call["function"].get("name") or ""
                entry["arguments"] += call["function"].get("arguments") or ""
    assert calls == {
        0: {"name": "get_weather", "arguments": '{"city":"test"}'},
        1: {"name": "get_time", "arguments": '{"zone":"test"}'},
    }
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert decoder.done
    assert decoder.usage is not None
    assert decoder.usage.completion_tokens > 0

    status, raw = raw_post(fake, encode_chat_request({**canonical, "stream": False}, model=MODEL), HEADERS)
    answer = decode_chat_response(orjson.loads(raw), model="claude")
    assert [call["function"]["name"] for call in answer["choices"][0]["message"]["tool_calls"]] == [
        "get_weather",
        "get_time",
    ]


def test_thinking_streams_thinking_and_signature_deltas(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Think first"}],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds
    assert "signature" in kinds
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].type == "thinking"
    assert final.content[0].signature == "sig_fake0001"
