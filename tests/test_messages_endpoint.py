"""``/v1/messages`` with the official ``anthropic`` SDK, in front of every kind of provider.

The mock provider, an OpenAI upstream and a Gemini upstream are reached by translation: the
Anthropic request becomes the canonical form and the answer, streams included, is rebuilt as
Anthropic's exact event sequence. An Anthropic upstream is reached natively: the client's body is
forwarded as it is (but for the model name) and the upstream's events reach the client byte for byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import ToolParam

from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer
from tests.fakes import FakeOpenAI
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text_block, tool_use_block
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.gemini_upstream import Reply as GeminiReply
from tests.one_call import one_call

CLAUDE = "claude-sonnet-4-5"
MOCK_ONLY_KEY = "lg-messages-mock-only-0123456789abcdef"
MAX_BODY = 64 * 1024
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def claude_upstream() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="module")
def gemini_upstream() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def claude(claude_upstream: FakeAnthropic) -> Iterator[FakeAnthropic]:
    claude_upstream.reset()
    yield claude_upstream
    claude_upstream.reset()


@pytest.fixture
def gemini(gemini_upstream: FakeGemini) -> Iterator[FakeGemini]:
    gemini_upstream.reset()
    yield gemini_upstream
    gemini_upstream.reset()


@pytest.fixture(scope="module")
def gateway_url(
    claude_upstream: FakeAnthropic, gemini_upstream: FakeGemini, fake_upstream: FakeOpenAI
) -> Iterator[str]:
    def anthropic_deployment(**extra: Any) -> dict[str, Any]:
        entry = {
            "provider": "anthropic",
            "base_url": claude_upstream.url,
            "api_key": claude_upstream.api_key,
            "model": CLAUDE,
            **extra,
        }
        return {"deployments": [entry]}

    config = {
        "server": {"max_body_bytes": MAX_BODY},
        "models": {
            "claude-mock": {"deployments": [{"provider": "mock", "options": {"chunks": 3}}]},
            "gpt-4o-mini": {
                "deployments": [
                    {
                        "provider": "openai",
                        "base_url": fake_upstream.base_url,
                        "api_key": fake_upstream.api_key,
                    }
                ]
            },
            "gemini": {
                "deployments": [
                    {
                        "provider": "gemini",
                        "base_url": gemini_upstream.url,
                        "api_key": gemini_upstream.api_key,
                        "model": "gemini-2.5-flash",
                    }
                ]
            },
            "claude": anthropic_deployment(),
            "claude-bad-key": anthropic_deployment(api_key="sk-ant-wrong-key-000000000000"),
            "claude-slow": anthropic_deployment(timeout={"read": 0.3}),
        },
        "plugins": {
            "config_keys": {
                "keys": [
                    {"name": "test", "key": DEFAULT_TEST_KEY},
                    {"name": "mock-only", "key": MOCK_ONLY_KEY, "models": ["claude-mock"]},
                ]
            }
        },
    }
    with GatewayServer(one_call(config)) as server:
        yield server.url


@pytest.fixture
def client(gateway_url: str) -> Iterator[anthropic.Anthropic]:
    """The sync ``anthropic`` SDK on the gateway (it sends its key as ``Authorization: Bearer``)."""
    with anthropic.Anthropic(
        base_url=gateway_url, api_key=DEFAULT_TEST_KEY, max_retries=0, timeout=10
    ) as sdk:
        yield sdk


@pytest.fixture
async def async_client(gateway_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=gateway_url, api_key=DEFAULT_TEST_KEY, max_retries=0, timeout=10
    ) as sdk:
        yield sdk


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data)`` of each event of an Anthropic stream; every event's data names its type."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(fields["data"])
        assert data["type"] == fields["event"]
        events.append((fields["event"], data))
    return events


def assert_well_formed(events: list[tuple[str, dict[str, Any]]]) -> None:
    """The grammar of a Messages stream: start, blocks opened and closed in order, delta, stop."""
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    open_block: int | None = None
    expected = 0
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_block is None and data["index"] == expected
            open_block = expected
        elif name == "content_block_delta":
            assert data["index"] == open_block
        elif name == "content_block_stop":
            assert data["index"] == open_block
            open_block, expected = None, expected + 1
        else:
            assert name == "ping"
    assert open_block is None


def post_stream(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
    with httpx.Client(timeout=10) as http, http.stream("POST", url, json=body, headers=headers) as response:
        return response, response.read()


def gateway_headers(**extra: str) -> dict[str, str]:
    return {"x-api-key": DEFAULT_TEST_KEY, "anthropic-version": "2023-06-01", **extra}


# --- the mock provider -------------------------------------------------------------------------------


def test_a_message_from_the_mock_provider(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="claude-mock", max_tokens=100, messages=user("hi there friend"))

    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == "claude-mock"
    assert [(block.type, getattr(block, "text", None)) for block in message.content] == [
        ("text", "hi there friend")
    ]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 3)


async def test_a_message_from_the_async_sdk(async_client: anthropic.AsyncAnthropic) -> None:
    message = await async_client.messages.create(
        model="claude-mock", max_tokens=2, system="Be brief.", messages=user("one two three four")
    )

    assert message.content[0].type == "text" and message.content[0].text == "one two"
    assert message.stop_reason == "max_tokens"


def test_a_stream_from_the_mock_provider_event_by_event(gateway_url: str) -> None:
    body = {"model": "claude-mock", "max_tokens": 100, "stream": True, "messages": user("hi there friend")}

    response, raw = post_stream(f"{gateway_url}/v1/messages", body, gateway_headers())

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"]
    events = parse_sse(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert_well_formed(events)
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["content"] == [] and start["model"] == "claude-mock"
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert {delta["type"] for delta in deltas} == {"text_delta"}
    assert "".join(delta["text"] for delta in deltas) == "hi there friend"
    message_delta = events[-2][1]
    assert message_delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert message_delta["usage"]["output_tokens"] == 3


def test_the_sdk_stream_helper_builds_the_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="claude-mock", max_tokens=100, messages=user("stream this please")
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()

    assert "".join(texts) == "stream this please"
    assert final.content[0].type == "text" and final.content[0].text == "stream this please"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 3)


def test_count_tokens_estimates_for_the_mock(client: anthropic.Anthropic) -> None:
    count = client.messages.count_tokens(model="claude-mock", messages=user("how many tokens is this"))

    assert count.input_tokens > 0


# --- an OpenAI upstream --------------------------------------------------------------------------------


def test_a_message_from_an_openai_upstream(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    message = client.messages.create(
        model="gpt-4o-mini",
        max_tokens=50,
        system="Be brief.",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "first"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": "hello"},
        ],
        stop_sequences=["END"],
        metadata={"user_id": "customer-7"},
        extra_body={"temperature": 0.5},
    )

    assert message.content[0].type == "text" and message.content[0].text == "Echo: hello"
    assert message.stop_reason == "end_turn"
    assert message.model == "gpt-4o-mini"
    sent = fake.requests_to("/v1/chat/completions")[-1].json
    assert sent == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "first"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "hello"},
        ],
        "max_tokens": 50,
        "temperature": 0.5,
        "stop": ["END"],
        "user": "customer-7",
    }


def test_a_stream_from_an_openai_upstream(gateway_url: str, fake: FakeOpenAI) -> None:
    fake.behave(reply="streamed from openai", chunks=3)
    body = {"model": "gpt-4o-mini", "max_tokens": 50, "stream": True, "messages": user("hi")}

    _, raw = post_stream(f"{gateway_url}/v1/messages", body, gateway_headers())

    events = parse_sse(raw)
    assert_well_formed(events)
    text = "".join(d["delta"]["text"] for name, d in events if name == "content_block_delta")
    assert text == "streamed from openai"
    assert events[-2][1]["usage"]["output_tokens"] == 3
    sent = fake.requests_to("/v1/chat/completions")[-1].json
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


# --- a Gemini upstream ---------------------------------------------------------------------------------


def test_a_message_from_gemini(client: anthropic.Anthropic, gemini: FakeGemini) -> None:
    message = client.messages.create(model="gemini", max_tokens=64, messages=user("hello gemini"))

    assert message.content[0].type == "text" and message.content[0].text == "Echo: hello gemini"
    assert gemini.requests_to("generateContent")[-1].json == {
        "contents": [{"role": "user", "parts": [{"text": "hello gemini"}]}],
        "generationConfig": {"maxOutputTokens": 64},
    }


def test_a_tool_use_stream_from_gemini_event_by_event(gateway_url: str, gemini: FakeGemini) -> None:
    gemini.script(GeminiReply(text="Checking.", function_calls=[("get_weather", {"city": "Paris"})]))
    body = {
        "model": "gemini",
        "max_tokens": 100,
        "stream": True,
        "tools": [WEATHER],
        "messages": user("weather in Paris?"),
    }

    _, raw = post_stream(f"{gateway_url}/v1/messages", body, gateway_headers())

    events = parse_sse(raw)
    assert_well_formed(events)
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert [block["type"] for block in starts] == ["text", "tool_use"]
    assert starts[1]["name"] == "get_weather" and starts[1]["input"] == {}
    assert starts[1]["id"]
    json_deltas = [d["delta"] for name, d in events if name == "content_block_delta" and d["index"] == 1]
    assert {delta["type"] for delta in json_deltas} == {"input_json_delta"}
    assert json.loads("".join(delta["partial_json"] for delta in json_deltas)) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_a_tool_round_trip_with_gemini_through_the_sdk(
    client: anthropic.Anthropic, gemini: FakeGemini
) -> None:
    gemini.script(
        GeminiReply(function_calls=[("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})])
    )
    messages: list[Any] = user("weather in Paris and Rome?")

    with client.messages.stream(model="gemini", max_tokens=100, tools=[WEATHER], messages=messages) as stream:
        first = stream.get_final_message()

    assert first.stop_reason == "tool_use"
    calls = [block for block in first.content if block.type == "tool_use"]
    assert [(call.name, call.input) for call in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]
    messages.append({"role": "assistant", "content": [call.model_dump() for call in calls]})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": calls[0].id, "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": calls[1].id,
                    "content": [{"type": "text", "text": "rain"}],
                },
            ],
        }
    )

    second = client.messages.create(model="gemini", max_tokens=100, tools=[WEATHER], messages=messages)

    assert second.content[0].type == "text"
    assert (
        second.content[0].text == 'Results: get_weather: {"output":"sunny"}; get_weather: {"output":"rain"}'
    )
    contents = gemini.requests_to("generateContent")[-1].json["contents"]
    assert [content["role"] for content in contents] == ["user", "model", "user"]
    assert [list(part) for part in contents[2]["parts"]] == [["functionResponse"], ["functionResponse"]]


def test_count_tokens_is_asked_of_gemini(client: anthropic.Anthropic, gemini: FakeGemini) -> None:
    count = client.messages.count_tokens(
        model="gemini", system="be brief", messages=user("count these four words")
    )

    assert count.input_tokens == 2 + 4
    assert gemini.requests_to("countTokens")[-1].path == "/v1beta/models/gemini-2.5-flash:countTokens"


# --- an Anthropic upstream: native pass-through ----------------------------------------------------------


THINKING_REQUEST: dict[str, Any] = {
    "max_tokens": 2048,
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "system": [
        {"type": "text", "text": "You are a careful assistant.", "cache_control": {"type": "ephemeral"}}
    ],
    "tools": [{**WEATHER, "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "a long shared context",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                },
                {"type": "text", "text": "what do you think"},
            ],
        }
    ],
}


def test_the_native_body_is_forwarded_unchanged_but_for_the_model(
    client: anthropic.Anthropic, claude: FakeAnthropic
) -> None:
    message = client.messages.create(
        model="claude",
        **THINKING_REQUEST,
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
    )

    request = claude.requests_to("/v1/messages")[-1]
    assert request.json == {"model": CLAUDE, **THINKING_REQUEST}
    assert request.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking = message.content[0]
    assert thinking.type == "thinking" and thinking.signature == "sig_fake0001"
    assert message.model == CLAUDE
    assert message.id.startswith("msg_fake")


def test_a_native_stream_reaches_the_client_byte_for_byte(gateway_url: str, claude: FakeAnthropic) -> None:
    body = {"model": "claude", "stream": True, **THINKING_REQUEST}

    response, via_gateway = post_stream(f"{gateway_url}/v1/messages", body, gateway_headers())
    _, direct = post_stream(
        f"{claude.url}/v1/messages",
        {**body, "model": CLAUDE},
        {"x-api-key": claude.api_key, "anthropic-version": "2023-06-01"},
    )

    assert response.status_code == 200
    forwarded = claude.requests_to("/v1/messages")[0].json
    assert forwarded == {**body, "model": CLAUDE}
    # The fake numbers its messages; apart from that the two streams are the same bytes.
    same_id = re.compile(rb"msg_fake\d{8}")
    assert same_id.sub(b"msg_X", via_gateway) == same_id.sub(b"msg_X", direct)
    events = parse_sse(via_gateway)
    assert_well_formed(events)
    deltas = {d["delta"]["type"] for name, d in events if name == "content_block_delta"}
    assert deltas == {"thinking_delta", "signature_delta", "text_delta"}


@pytest.mark.parametrize("model", ["gemini", "gpt-4o-mini", "claude-mock"])
def test_extended_thinking_is_refused_where_it_cannot_be_translated(
    client: anthropic.Anthropic, gemini: FakeGemini, fake: FakeOpenAI, model: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=model, **THINKING_REQUEST)

    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["message"].startswith("thinking:")
    assert gemini.requests == [] and fake.requests == []


async def test_a_native_tool_use_stream_through_the_async_sdk(
    async_client: anthropic.AsyncAnthropic, claude: FakeAnthropic
) -> None:
    claude.enqueue(
        Reply(
            [text_block("Let me check."), tool_use_block("get_weather", {"city": "Oslo"}, "toolu_01")],
            stop_reason="tool_use",
        )
    )
    events: list[str] = []

    async with async_client.messages.stream(
        model="claude",
        max_tokens=100,
        tools=[WEATHER],
        messages=user("weather?"),
    ) as stream:
        async for event in stream:
            events.append(event.type)
        final = await stream.get_final_message()

    assert final.stop_reason == "tool_use"
    assert final.content[1].type == "tool_use"
    assert (final.content[1].id, final.content[1].input) == ("toolu_01", {"city": "Oslo"})
    assert "input_json" in events


def test_a_native_tool_round_trip_keeps_the_pairing(
    client: anthropic.Anthropic, claude: FakeAnthropic
) -> None:
    first = client.messages.create(
        model="claude",
        max_tokens=100,
        tools=[WEATHER],
        messages=user("call tool get_weather"),
    )
    calls = [block for block in first.content if block.type == "tool_use"]

    second = client.messages.create(
        model="claude",
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            *user("call tool get_weather"),
            {"role": "assistant", "content": [call.model_dump() for call in calls]},  # type: ignore[misc,list-item]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": calls[0].id, "content": "windy", "is_error": False}
                ],
            },
        ],
    )

    assert second.content[0].type == "text" and second.content[0].text == "Tool result: windy"


def test_count_tokens_is_forwarded_to_anthropic(client: anthropic.Anthropic, claude: FakeAnthropic) -> None:
    count = client.messages.count_tokens(
        model="claude",
        system="two words",
        messages=user("count these four words"),
        thinking={"type": "enabled", "budget_tokens": 1024},
    )

    assert count.input_tokens == 2 + 4
    sent = claude.requests_to("/v1/messages/count_tokens")[-1].json
    assert sent == {
        "model": CLAUDE,
        "system": "two words",
        "messages": user("count these four words"),
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }


# --- authentication ------------------------------------------------------------------------------------


def test_the_key_in_x_api_key(gateway_url: str) -> None:
    body = {"model": "claude-mock", "max_tokens": 10, "messages": user("hi")}
    with httpx.Client(timeout=10) as http:
        response = http.post(f"{gateway_url}/v1/messages", json=body, headers=gateway_headers())
        beta = http.post(
            f"{gateway_url}/v1/messages",
            json=body,
            headers=gateway_headers(**{"anthropic-beta": "prompt-caching-2024-07-31"}),
        )

    assert response.status_code == 200
    assert response.json()["content"] == [{"type": "text", "text": "hi"}]
    assert beta.status_code == 200


def test_the_key_as_a_bearer_token(gateway_url: str) -> None:
    with anthropic.Anthropic(
        base_url=gateway_url, auth_token=DEFAULT_TEST_KEY, max_retries=0, timeout=10
    ) as sdk:
        message = sdk.messages.create(model="claude-mock", max_tokens=10, messages=user("bearer"))

    assert message.content[0].type == "text" and message.content[0].text == "bearer"


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "lg-not-a-key"}], ids=["missing", "wrong"])
def test_a_missing_or_wrong_key_is_a_401(gateway_url: str, headers: dict[str, str]) -> None:
    body = {"model": "claude-mock", "max_tokens": 10, "messages": user("hi")}
    with httpx.Client(timeout=10) as http:
        response = http.post(f"{gateway_url}/v1/messages", json=body, headers=headers)

    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["x-request-id"]


def test_a_wrong_key_in_the_sdk_is_an_authentication_error(gateway_url: str) -> None:
    with (
        anthropic.Anthropic(base_url=gateway_url, api_key="lg-not-a-key", max_retries=0, timeout=10) as sdk,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        sdk.messages.create(model="claude-mock", max_tokens=10, messages=user("hi"))

    assert caught.value.status_code == 401


def test_a_key_restricted_to_other_models_is_a_403(gateway_url: str) -> None:
    with anthropic.Anthropic(base_url=gateway_url, api_key=MOCK_ONLY_KEY, max_retries=0, timeout=10) as sdk:
        allowed = sdk.messages.create(model="claude-mock", max_tokens=10, messages=user("ok"))
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            sdk.messages.create(model="claude", max_tokens=10, messages=user("hi"))

    assert allowed.content[0].type == "text"
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "permission_error",
            "message": "This API key is not allowed to use the model `claude`.",
        },
    }


# --- request errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "claude-mock", "messages": user("hi")}, "max_tokens: Field required"),
        (
            {"model": "claude-mock", "max_tokens": 10, "messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role: Input should be 'user', 'assistant' or 'system'",
        ),
        (
            {"model": "claude-mock", "max_tokens": 10, "messages": user("hi"), "frobnicate": True},
            "frobnicate: Extra inputs are not permitted",
        ),
    ],
    ids=["missing-max-tokens", "bad-role", "unknown-field"],
)
def test_invalid_requests_are_anthropic_shaped_400s(
    client: anthropic.Anthropic, claude: FakeAnthropic, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.post("/v1/messages", cast_to=object, body=body)

    assert caught.value.status_code == 400
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    }


def test_an_unknown_model_is_a_404(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="claude-nonexistent", max_tokens=10, messages=user("hi"))

    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "claude-nonexistent" in caught.value.body["error"]["message"]


def test_an_unknown_route_under_messages_is_an_anthropic_404(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.batches.list()

    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "not_found_error"


def test_a_body_over_the_limit_is_a_413(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.ContentTooLargeError) as caught:
        client.messages.create(model="claude-mock", max_tokens=10, messages=user("x " * MAX_BODY))

    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "request_too_large"


# --- upstream errors -----------------------------------------------------------------------------------


def test_an_upstream_rate_limit_is_a_429_with_retry_after(
    client: anthropic.Anthropic, claude: FakeAnthropic
) -> None:
    claude.behave(
        status=429, error_type="rate_limit_error", message="Rate limited.", headers={"retry-after": "11"}
    )

    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="claude", max_tokens=10, messages=user("hi"))

    assert caught.value.response.headers["retry-after"] == "11"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "rate_limit_error"


def test_an_upstream_refusing_the_gateways_key_is_a_502(
    client: anthropic.Anthropic, claude: FakeAnthropic
) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model="claude-bad-key", max_tokens=10, messages=user("hi"))

    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "api_error"
    assert "sk-ant-wrong" not in caught.value.response.text


def test_an_overloaded_upstream_is_a_503(client: anthropic.Anthropic, claude: FakeAnthropic) -> None:
    claude.behave(status=529, error_type="overloaded_error", message="Overloaded")

    with pytest.raises(anthropic.ServiceUnavailableError) as caught:
        client.messages.create(model="claude", max_tokens=10, messages=user("hi"))

    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_a_slow_upstream_is_a_504(client: anthropic.Anthropic, claude: FakeAnthropic) -> None:
    claude.behave(delay=1.0)

    with pytest.raises(anthropic.GatewayTimeoutError) as caught:
        client.messages.create(model="claude-slow", max_tokens=10, messages=user("hi"))

    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "timeout_error"


def test_an_error_event_in_a_native_stream_reaches_the_sdk(
    client: anthropic.Anthropic, claude: FakeAnthropic
) -> None:
    claude.behave(stream_error="overloaded_error", stream_error_after=4)

    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model="claude", max_tokens=100, messages=user("a long answer")) as stream,
    ):
        for _text in stream.text_stream:
            pass

    # Rebuilt, not forwarded: the type stays the upstream's, the message is the gateway's own.
    assert "overloaded" in str(caught.value)
    assert "type: overloaded_error" in str(caught.value)


def test_a_translated_stream_cut_mid_way_ends_with_an_error_event(
    gateway_url: str, gemini: FakeGemini
) -> None:
    gemini.behave(chunks=4, die_after=2)
    body = {"model": "gemini", "max_tokens": 100, "stream": True, "messages": user("a long answer please")}

    _, raw = post_stream(f"{gateway_url}/v1/messages", body, gateway_headers())

    events = parse_sse(raw)
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in events]


def test_a_native_stream_cut_mid_way_ends_with_an_error_event(
    gateway_url: str, claude: FakeAnthropic
) -> None:
    claude.behave(die_after=5)
    body = {"model": "claude", "max_tokens": 100, "stream": True, "messages": user("a long answer please")}

    _, raw = post_stream(f"{gateway_url}/v1/messages", body, gateway_headers())

    events = parse_sse(raw)
    assert [name for name, _ in events][-1] == "error"
    assert "message_stop" not in [name for name, _ in events]
