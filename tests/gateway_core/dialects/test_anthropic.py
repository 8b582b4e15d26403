"""Anthropic <-> canonical OpenAI translation, both directions, streams and errors included."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from gateway_core.dialects.anthropic import (
    MessagesStreamEncoder,
    StreamDecoder,
    decode_chat_response,
    decode_error,
    decode_messages_request,
    encode_chat_request,
    encode_error,
    encode_messages_response,
)
from gateway_core.errors import GatewayError
from gateway_core.sse import SSEParser
from gateway_core.types import Usage
from tests.fakes.anthropic_upstream import validate

MODEL = "claude-sonnet-4-6"
CREATED = 1_700_000_000
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "description": "Current weather of a city.",
}
ANTHROPIC_TIME = {
    "name": "get_time",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}},
}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def encode(**body: Any) -> dict[str, Any]:
    return encode_chat_request(body, model=MODEL)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def raises_400(param: str | None = None) -> Any:
    """Assert a 400 GatewayError, naming ``param`` when given."""

    class Check:
        def __enter__(self) -> None:
            return None

        def __exit__(self, kind: Any, error: Any, tb: Any) -> bool:
            assert isinstance(error, GatewayError), f"expected a GatewayError, got {error!r}"
            assert error.status == 400, error
            if param is not None:
                assert error.param == param, error
            return True

    return Check()


# --- encode_chat_request --------------------------------------------------------------------------------


def test_a_simple_chat_becomes_a_messages_body() -> None:
    body = encode(
        model="my-alias",
        messages=[{"role": "system", "content": "Be brief."}, user("Hello")],
        max_tokens=100,
        temperature=0.3,
        top_p=0.9,
        stop="END",
        user="user-42",
        stream=True,
        stream_options={"include_usage": True},
    )
    assert body == {
        "model": MODEL,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hello"}],
        "system": "Be brief.",
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }
    validate(body)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, 4096),
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 70}, 70),
        ({"max_tokens": 50, "max_completion_tokens": 70}, 70),
    ],
)
def test_max_tokens_is_always_set(extra: dict[str, Any], expected: int) -> None:
    assert encode(messages=[user("Hi")], **extra)["max_tokens"] == expected


def test_the_default_max_tokens_is_configurable() -> None:
    body = encode_chat_request({"messages": [user("Hi")]}, model=MODEL, default_max_tokens=1234)
    assert body["max_tokens"] == 1234


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10"])
def test_bad_max_tokens_is_a_400(value: Any) -> None:
    with raises_400("max_tokens"):
        encode(messages=[user("Hi")], max_tokens=value)


def test_system_and_developer_messages_are_hoisted_in_order() -> None:
    body = encode(
        messages=[
            {"role": "system", "content": "Rule one."},
            {"role": "developer", "content": [{"type": "text", "text": "Rule two."}]},
            user("Hi"),
            {"role": "assistant", "content": "Hello."},
            {"role": "system", "content": "Rule three."},
            user("Bye"),
        ]
    )
    assert body["system"] == [
        {"type": "text", "text": "Rule one."},
        {"type": "text", "text": "Rule two."},
        {"type": "text", "text": "Rule three."},
    ]
    assert body["messages"] == [user("Hi"), {"role": "assistant", "content": "Hello."}, user("Bye")]
    validate(body)


def test_consecutive_turns_of_one_role_are_merged() -> None:
    body = encode(
        messages=[
            user("One"),
            user("Two"),
            {"role": "assistant", "content": "A"},
            {"role": "assistant", "content": "B"},
        ]
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
    ]


def test_multi_part_content_with_images_and_a_pdf() -> None:
    body = encode(
        messages=[
            user(
                [
                    {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"},
                    },
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {
                        "type": "file",
                        "file": {
                            "filename": "report.pdf",
                            "file_data": "data:application/pdf;base64,JVBERi0x",
                        },
                    },
                ]
            )
        ]
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
                    "title": "report.pdf",
                },
            ],
        }
    ]
    validate(body)


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (
            {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png,not-base64"}},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}},
            "messages[0].content[0].image_url.url",
        ),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "messages[0].content[0]"),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "messages[0].content[0].file"),
        ({"type": "video", "video": {}}, "messages[0].content[0].type"),
    ],
)
def test_content_anthropic_cannot_take_is_a_400(part: dict[str, Any], param: str) -> None:
    with raises_400(param):
        encode(messages=[user([part])])


def test_empty_user_content_is_a_400() -> None:
    with raises_400("messages[0].content"):
        encode(messages=[user("")])


def test_tool_calls_and_results_become_tool_use_and_tool_result_blocks() -> None:
    body = encode(
        messages=[
            user("Weather and time in Paris?"),
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    call("call_1", "get_weather", '{"city": "Paris"}'),
                    call("call_2", "get_time", '{"zone": "Europe/Paris"}'),
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:05"}]},
            user("Thanks! Anything else?"),
        ],
        tools=[WEATHER_TOOL, TIME_TOOL],
    )
    assert body["messages"] == [
        user("Weather and time in Paris?"),
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {"zone": "Europe/Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "Sunny, 21 C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "14:05"}],
                },
                {"type": "text", "text": "Thanks! Anything else?"},
            ],
        },
    ]
    assert body["tools"] == [ANTHROPIC_WEATHER, ANTHROPIC_TIME]
    validate(body)


def test_an_assistant_message_with_only_tool_calls_and_empty_arguments() -> None:
    body = encode(
        messages=[
            user("Time?"),
            {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_time", "")]},
            {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
        ],
        tools=[TIME_TOOL],
    )
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "call_1", "name": "get_time", "input": {}}],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "noon"}],
    }


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_tool_call_arguments_that_are_not_a_json_object_are_a_400(arguments: str) -> None:
    with raises_400("messages[1].tool_calls[0].function.arguments"):
        encode(
            messages=[
                user("Hi"),
                {"role": "assistant", "tool_calls": [call("call_1", "get_time", arguments)]},
                {"role": "tool", "tool_call_id": "call_1", "content": "x"},
            ],
            tools=[TIME_TOOL],
        )


def test_a_tool_message_must_answer_a_preceding_tool_call() -> None:
    with raises_400("messages[1].tool_call_id"):
        encode(messages=[user("Hi"), {"role": "tool", "tool_call_id": "call_9", "content": "x"}])


def test_every_tool_call_needs_a_tool_message() -> None:
    with pytest.raises(GatewayError) as caught:
        encode(
            messages=[
                user("Hi"),
                {
                    "role": "assistant",
                    "tool_calls": [call("call_1", "get_time", "{}"), call("call_2", "get_time", "{}")],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "x"},
                user("and?"),
            ],
            tools=[TIME_TOOL],
        )
    assert caught.value.status == 400
    assert "call_2" in caught.value.message


def test_unknown_roles_are_a_400() -> None:
    with raises_400("messages[0].role"):
        encode(messages=[{"role": "function", "name": "f", "content": "x"}])


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "get_time"}}, None, {"type": "tool", "name": "get_time"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            False,
            {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
        ),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tool_choice(tool_choice: Any, parallel: Any, expected: dict[str, Any] | None) -> None:
    extra = {
        k: v
        for k, v in {"tool_choice": tool_choice, "parallel_tool_calls": parallel}.items()
        if v is not None
    }
    body = encode(messages=[user("Hi")], tools=[WEATHER_TOOL, TIME_TOOL], **extra)
    assert body.get("tool_choice") == expected
    validate(body)


def test_tool_choice_without_tools() -> None:
    assert "tool_choice" not in encode(messages=[user("Hi")], tool_choice="none")
    assert "tool_choice" not in encode(messages=[user("Hi")], tool_choice="auto", parallel_tool_calls=False)
    with raises_400("tool_choice"):
        encode(messages=[user("Hi")], tool_choice="required")


def test_tool_choice_naming_an_unknown_function_is_a_400() -> None:
    with raises_400("tool_choice"):
        encode(
            messages=[user("Hi")],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )


def test_tool_definitions_keep_strict_and_default_an_empty_schema() -> None:
    body = encode(
        messages=[user("Hi")],
        tools=[{"type": "function", "function": {"name": "ping", "strict": True}}],
    )
    assert body["tools"] == [
        {"name": "ping", "input_schema": {"type": "object", "properties": {}}, "strict": True}
    ]


def test_non_function_tools_are_a_400_or_dropped() -> None:
    tools = [{"type": "custom", "custom": {"name": "grammar"}}, WEATHER_TOOL]
    with raises_400("tools[0]"):
        encode(messages=[user("Hi")], tools=tools)
    body = encode_chat_request({"messages": [user("Hi")], "tools": tools}, model=MODEL, drop_params=True)
    assert body["tools"] == [ANTHROPIC_WEATHER]


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("END", ["END"]), (["a", "b"], ["a", "b"]), ([], None), (None, None)],
)
def test_stop_becomes_stop_sequences(stop: Any, expected: list[str] | None) -> None:
    assert encode(messages=[user("Hi")], stop=stop).get("stop_sequences") == expected


@pytest.mark.parametrize(("temperature", "kept"), [(0, True), (0.7, True), (1, True), (1.0, True)])
def test_temperature_in_anthropics_range_is_kept(temperature: float, kept: bool) -> None:
    assert encode(messages=[user("Hi")], temperature=temperature)["temperature"] == temperature


@pytest.mark.parametrize("temperature", [1.2, 2])
def test_temperature_above_one_is_a_400_or_dropped(temperature: float) -> None:
    with raises_400("temperature"):
        encode(messages=[user("Hi")], temperature=temperature)
    body = encode_chat_request(
        {"messages": [user("Hi")], "temperature": temperature}, model=MODEL, drop_params=True
    )
    assert "temperature" not in body


def test_top_k_is_passed_on_as_an_extension() -> None:
    assert encode(messages=[user("Hi")], top_k=40)["top_k"] == 40


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1),
        ("seed", 7),
        ("logit_bias", {"50256": -100}),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("verbosity", "low"),
        ("store", True),
        ("web_search_options", {}),
        ("some_vendor_param", 1),
    ],
)
def test_parameters_anthropic_lacks_are_a_400_naming_them_or_dropped(param: str, value: Any) -> None:
    with raises_400(param):
        encode(messages=[user("Hi")], **{param: value})
    body = encode_chat_request({"messages": [user("Hi")], param: value}, model=MODEL, drop_params=True)
    assert body == {"model": MODEL, "max_tokens": 4096, "messages": [user("Hi")]}


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("n", 1),
        ("logprobs", False),
        ("presence_penalty", 0),
        ("frequency_penalty", 0.0),
        ("logit_bias", {}),
        ("modalities", ["text"]),
        ("store", False),
        ("seed", None),
        ("metadata", {"team": "a"}),
        ("stream_options", {"include_usage": True}),
        ("prompt_cache_key", "k"),
    ],
)
def test_parameters_that_change_nothing_are_accepted(param: str, value: Any) -> None:
    assert encode(messages=[user("Hi")], **{param: value}) == {
        "model": MODEL,
        "max_tokens": 4096,
        "messages": [user("Hi")],
    }


def test_json_schema_response_format_uses_structured_outputs() -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    body = encode(
        messages=[user("Extract")],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    validate(body)


def test_json_object_response_format_is_a_400_or_dropped() -> None:
    with raises_400("response_format"):
        encode(messages=[user("Hi")], response_format={"type": "json_object"})
    body = encode_chat_request(
        {"messages": [user("Hi")], "response_format": {"type": "json_object"}}, model=MODEL, drop_params=True
    )
    assert "output_config" not in body


def test_text_response_format_changes_nothing() -> None:
    assert "output_config" not in encode(messages=[user("Hi")], response_format={"type": "text"})


@pytest.mark.parametrize(
    ("effort", "expected"), [("low", "low"), ("high", "high"), ("xhigh", "xhigh"), ("max", "max")]
)
def test_reasoning_effort_becomes_output_effort(effort: str, expected: str) -> None:
    assert encode(messages=[user("Hi")], reasoning_effort=effort)["output_config"] == {"effort": expected}


@pytest.mark.parametrize("effort", ["minimal", "none"])
def test_reasoning_efforts_without_equivalent(effort: str) -> None:
    with raises_400("reasoning_effort"):
        encode(messages=[user("Hi")], reasoning_effort=effort)


@pytest.mark.parametrize(("tier", "expected"), [("auto", "auto"), ("default", "standard_only")])
def test_service_tier(tier: str, expected: str) -> None:
    assert encode(messages=[user("Hi")], service_tier=tier)["service_tier"] == expected
    with raises_400("service_tier"):
        encode(messages=[user("Hi")], service_tier="flex")


def test_safety_identifier_is_preferred_to_user() -> None:
    body = encode(messages=[user("Hi")], user="old", safety_identifier="new")
    assert body["metadata"] == {"user_id": "new"}


def test_stream_false_passes_through() -> None:
    assert encode(messages=[user("Hi")], stream=False)["stream"] is False


def test_messages_are_required() -> None:
    with raises_400("messages"):
        encode(messages=[])
    with raises_400("messages"):
        encode(messages=[{"role": "system", "content": "only a system prompt"}])


# --- decode_chat_response -------------------------------------------------------------------------------


def anthropic_message(
    content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int
) -> dict[str, Any]:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6-20260101",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 6, **usage},
    }


def test_a_text_message_becomes_a_chat_completion() -> None:
    data = anthropic_message(
        [{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}],
        cache_read_input_tokens=100,
        cache_creation_input_tokens=20,
    )
    assert decode_chat_response(data, model="my-claude", created=CREATED) == {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "created": CREATED,
        "model": "my-claude",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 132,
            "completion_tokens": 6,
            "total_tokens": 138,
            "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def test_parallel_tool_use_becomes_tool_calls() -> None:
    data = anthropic_message(
        [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}},
        ],
        stop_reason="tool_use",
    )
    choice = decode_chat_response(data, model=MODEL)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": "Checking both.",
        "refusal": None,
        "tool_calls": [
            {
                "id": "toolu_01A",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {"id": "toolu_01B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }


def test_only_tool_use_has_null_content() -> None:
    data = anthropic_message([{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}], "tool_use")
    assert decode_chat_response(data, model=MODEL)["choices"][0]["message"]["content"] is None


def test_thinking_is_exposed_as_reasoning_content() -> None:
    data = anthropic_message(
        [
            {"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "xyz"},
            {"type": "text", "text": "42"},
        ],
        output_tokens_details={"thinking_tokens": 4},  # type: ignore[arg-type]
    )
    result = decode_chat_response(data, model=MODEL)
    assert result["choices"][0]["message"]["content"] == "42"
    assert result["choices"][0]["message"]["reasoning_content"] == "Let me see."
    assert result["usage"]["completion_tokens_details"] == {"reasoning_tokens": 4}


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_stop_reasons(stop_reason: str, finish_reason: str) -> None:
    data = anthropic_message([{"type": "text", "text": "x"}], stop_reason)
    assert decode_chat_response(data, model=MODEL)["choices"][0]["finish_reason"] == finish_reason


# --- StreamDecoder --------------------------------------------------------------------------------------

MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_01Stream",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-6-20260101",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 10,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 1,
            "service_tier": "standard",
        },
    },
}


def delta_event(index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


def block_start(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}


def block_stop(index: int) -> tuple[str, dict[str, Any]]:
    return "content_block_stop", {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str, output_tokens: int, **usage: int) -> tuple[str, dict[str, Any]]:
    return "message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens, **usage},
    }


TEXT_STREAM = [
    ("message_start", MESSAGE_START),
    block_start(0, {"type": "text", "text": ""}),
    ("ping", {"type": "ping"}),
    delta_event(0, {"type": "text_delta", "text": "Hello"}),
    delta_event(0, {"type": "text_delta", "text": "!"}),
    block_stop(0),
    message_delta("end_turn", 15),
    ("message_stop", {"type": "message_stop"}),
]

TOOL_STREAM = [
    ("message_start", MESSAGE_START),
    block_start(0, {"type": "text", "text": ""}),
    ("ping", {"type": "ping"}),
    delta_event(0, {"type": "text_delta", "text": "Checking."}),
    block_stop(0),
    block_start(1, {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}}),
    delta_event(1, {"type": "input_json_delta", "partial_json": ""}),
    delta_event(1, {"type": "input_json_delta", "partial_json": '{"city":'}),
    delta_event(1, {"type": "input_json_delta", "partial_json": ' "Paris"}'}),
    block_stop(1),
    block_start(2, {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}}),
    delta_event(2, {"type": "input_json_delta", "partial_json": ""}),
    block_stop(2),
    message_delta("tool_use", 89, input_tokens=25, cache_read_input_tokens=10),
    ("message_stop", {"type": "message_stop"}),
]


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "msg_01Stream",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "my-claude",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(prompt: int, completion: int, cached: int, reasoning: int = 0) -> dict[str, Any]:
    return {
        **chunk({}),
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        },
    }


def decode_stream(events: list[tuple[str, dict[str, Any]]]) -> tuple[StreamDecoder, list[dict[str, Any]]]:
    decoder = StreamDecoder(model="my-claude", created=CREATED)
    chunks: list[dict[str, Any]] = []
    for event, data in events:
        chunks.extend(decoder.feed(event, data))
    return decoder, chunks


def test_a_text_stream_decodes_chunk_by_chunk() -> None:
    decoder, chunks = decode_stream(TEXT_STREAM)
    assert chunks == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": "!"}),
        chunk({}, "stop"),
        usage_chunk(35, 15, 10),
    ]
    assert decoder.done
    assert decoder.usage == Usage(prompt_tokens=35, completion_tokens=15, total_tokens=50, cached_tokens=10)


def test_a_tool_stream_numbers_tool_calls_from_zero() -> None:
    _, chunks = decode_stream(TOOL_STREAM)
    assert chunks == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Checking."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "toolu_01A",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "toolu_01B",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": ""},
                    }
                ]
            }
        ),
        # A call without arguments still gets a JSON object, as OpenAI clients parse it.
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        usage_chunk(35, 89, 10),
    ]


def test_thinking_deltas_become_reasoning_content() -> None:
    events = [
        ("message_start", MESSAGE_START),
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        delta_event(0, {"type": "thinking_delta", "thinking": "Hmm."}),
        delta_event(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}),
        block_stop(0),
        block_start(1, {"type": "text", "text": ""}),
        delta_event(1, {"type": "text_delta", "text": "Yes."}),
        block_stop(1),
        message_delta("end_turn", 20),
        ("message_stop", {"type": "message_stop"}),
    ]
    _, chunks = decode_stream(events)
    assert [c["choices"][0]["delta"] for c in chunks[:-2]] == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "Hmm."},
        {"content": "Yes."},
    ]


def test_events_without_an_event_name_use_the_data_type() -> None:
    decoder = StreamDecoder(model="my-claude", created=CREATED)
    chunks = [c for event, data in TEXT_STREAM for c in decoder.feed(None, data)]
    assert chunks == decode_stream(TEXT_STREAM)[1]


def test_exactly_one_finish_reason_even_with_two_message_deltas() -> None:
    events = [*TEXT_STREAM[:-1], message_delta("end_turn", 16), ("message_stop", {"type": "message_stop"})]
    _, chunks = decode_stream(events)
    finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1
    assert chunks[-1]["usage"]["completion_tokens"] == 16


def test_a_stream_cut_before_message_stop_is_not_done() -> None:
    decoder, chunks = decode_stream(TEXT_STREAM[:5])
    assert not decoder.done
    # What message_start reported is still known, for accounting.
    assert decoder.usage == Usage(prompt_tokens=35, completion_tokens=1, total_tokens=36, cached_tokens=10)
    assert all(c["choices"] for c in chunks)


def test_raw_sse_bytes_parse_and_decode() -> None:
    raw = b"".join(
        b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n" for name, data in TEXT_STREAM
    )
    parser = SSEParser()
    decoder = StreamDecoder(model="my-claude", created=CREATED)
    chunks = []
    for piece in (raw[:50], raw[50:333], raw[333:]):
        for event, data in parser.feed(piece):
            chunks.extend(decoder.feed(event, orjson.loads(data)))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello!"


@pytest.mark.parametrize(
    ("error_type", "status", "code"),
    [
        ("overloaded_error", 503, "overloaded"),
        ("rate_limit_error", 429, "rate_limit_exceeded"),
        ("api_error", 502, "upstream_error"),
        ("invalid_request_error", 400, None),
        ("timeout_error", 504, "upstream_timeout"),
    ],
)
def test_an_error_event_raises(error_type: str, status: int, code: str | None) -> None:
    decoder = StreamDecoder(model="my-claude")
    decoder.feed("message_start", MESSAGE_START)
    with pytest.raises(GatewayError) as caught:
        decoder.feed("error", {"type": "error", "error": {"type": error_type, "message": "Overloaded"}})
    assert (caught.value.status, caught.value.code) == (status, code)


# --- decode_error ---------------------------------------------------------------------------------------


def anthropic_error(error_type: str, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_01"}
    )


@pytest.mark.parametrize(
    ("status", "error_type", "expected_status", "expected_code"),
    [
        (400, "invalid_request_error", 400, None),
        (401, "authentication_error", 502, "upstream_auth_error"),
        (403, "permission_error", 502, "upstream_auth_error"),
        (404, "not_found_error", 502, "upstream_error"),
        (413, "request_too_large", 413, None),
        (429, "rate_limit_error", 429, "rate_limit_exceeded"),
        (500, "api_error", 502, "upstream_error"),
        (504, "timeout_error", 504, "upstream_timeout"),
        (529, "overloaded_error", 503, "overloaded"),
    ],
)
def test_decode_error(status: int, error_type: str, expected_status: int, expected_code: str | None) -> None:
    error = decode_error(status, anthropic_error(error_type, "messages.0: bad"), {"Retry-After": "7"})
    assert (error.status, error.code) == (expected_status, expected_code)
    if expected_status == 400:
        assert (error.message, error.type) == ("messages.0: bad", "invalid_request_error")
    if expected_status in (429, 503):
        assert error.headers["retry-after"] == "7"


def test_decode_error_does_not_leak_credential_messages() -> None:
    error = decode_error(401, anthropic_error("authentication_error", "invalid x-api-key sk-ant-123"))
    assert "sk-ant" not in error.message


def test_decode_error_of_a_non_json_body() -> None:
    assert decode_error(502, b"<html>Bad gateway</html>").status == 502


# --- decode_messages_request ----------------------------------------------------------------------------


def messages_request(**body: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-6", "max_tokens": 256, **body}


def test_a_messages_request_becomes_a_chat_request() -> None:
    canonical = decode_messages_request(
        messages_request(
            system="Be brief.",
            messages=[
                user("Hello"),
                {"role": "assistant", "content": "Hi!"},
                user([{"type": "text", "text": "Joke?"}]),
            ],
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END"],
            metadata={"user_id": "u-1"},
        )
    )
    assert canonical == {
        "model": "claude-sonnet-4-6",
        "messages": [
            {"role": "system", "content": "Be brief."},
            user("Hello"),
            {"role": "assistant", "content": "Hi!"},
            user([{"type": "text", "text": "Joke?"}]),
        ],
        "max_tokens": 256,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END"],
        "user": "u-1",
    }


def test_system_blocks_become_text_parts() -> None:
    canonical = decode_messages_request(
        messages_request(
            system=[
                {"type": "text", "text": "One."},
                {"type": "text", "text": "Two.", "cache_control": {"type": "ephemeral"}},
            ],
            messages=[user("Hi")],
        )
    )
    assert canonical["messages"][0] == {
        "role": "system",
        "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
    }


def test_system_messages_inside_messages_stay_in_place() -> None:
    canonical = decode_messages_request(
        messages_request(
            messages=[
                user("Hi"),
                {"role": "assistant", "content": "Hello."},
                {"role": "system", "content": [{"type": "text", "text": "Now answer in French."}]},
                user("Bye"),
            ]
        )
    )
    assert canonical["messages"][2] == {
        "role": "system",
        "content": [{"type": "text", "text": "Now answer in French."}],
    }


def test_images_and_documents() -> None:
    canonical = decode_messages_request(
        messages_request(
            messages=[
                user(
                    [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                        {
                            "type": "document",
                            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
                            "title": "report.pdf",
                        },
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "Plain."},
                        },
                        {"type": "text", "text": "Summarise."},
                    ]
                )
            ]
        )
    )
    assert canonical["messages"] == [
        user(
            [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                {
                    "type": "file",
                    "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
                },
                {"type": "text", "text": "Plain."},
                {"type": "text", "text": "Summarise."},
            ]
        )
    ]


def test_tool_use_and_tool_results() -> None:
    canonical = decode_messages_request(
        messages_request(
            tools=[ANTHROPIC_WEATHER, ANTHROPIC_TIME],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
            messages=[
                user("Weather and time?"),
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "Both tools.", "signature": "sig"},
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_A",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                        {"type": "tool_use", "id": "toolu_B", "name": "get_time", "input": {}},
                    ],
                },
                user(
                    [
                        {"type": "tool_result", "tool_use_id": "toolu_A", "content": "Sunny"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_B",
                            "content": [
                                {"type": "text", "text": "clock"},
                                {"type": "text", "text": "broken"},
                            ],
                            "is_error": True,
                        },
                        {"type": "text", "text": "And tomorrow?"},
                    ]
                ),
            ],
        )
    )
    assert canonical["messages"] == [
        user("Weather and time?"),
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_A",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "toolu_B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_A", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "toolu_B", "content": "Error: clock\nbroken"},
        user([{"type": "text", "text": "And tomorrow?"}]),
    ]
    assert canonical["tools"] == [WEATHER_TOOL, TIME_TOOL]
    assert (canonical["tool_choice"], canonical["parallel_tool_calls"]) == ("auto", False)


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "get_time"},
            {"tool_choice": {"type": "function", "function": {"name": "get_time"}}},
        ),
        (
            {"type": "any", "disable_parallel_tool_use": True},
            {"tool_choice": "required", "parallel_tool_calls": False},
        ),
    ],
)
def test_tool_choice_from_anthropic(tool_choice: dict[str, Any], expected: dict[str, Any]) -> None:
    canonical = decode_messages_request(
        messages_request(messages=[user("Hi")], tools=[ANTHROPIC_TIME], tool_choice=tool_choice)
    )
    assert {k: canonical.get(k) for k in ("tool_choice", "parallel_tool_calls") if k in canonical} == expected


def test_streaming_always_asks_for_usage() -> None:
    canonical = decode_messages_request(messages_request(messages=[user("Hi")], stream=True))
    assert (canonical["stream"], canonical["stream_options"]) == (True, {"include_usage": True})
    assert "stream_options" not in decode_messages_request(
        messages_request(messages=[user("Hi")], stream=False)
    )


def test_output_config_and_service_tier() -> None:
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    canonical = decode_messages_request(
        messages_request(
            messages=[user("Hi")],
            output_config={"effort": "high", "format": {"type": "json_schema", "schema": schema}},
            service_tier="standard_only",
        )
    )
    assert canonical["reasoning_effort"] == "high"
    assert canonical["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": True},
    }
    assert canonical["service_tier"] == "default"


def test_disabled_thinking_and_cache_control_are_accepted() -> None:
    canonical = decode_messages_request(
        messages_request(
            messages=[user("Hi")], thinking={"type": "disabled"}, cache_control={"type": "ephemeral"}
        )
    )
    assert "thinking" not in canonical
    assert "cache_control" not in canonical


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "claude-x", "messages": [user("Hi")]}, "max_tokens: Field required"),
        ({"max_tokens": 10, "messages": [user("Hi")]}, "model: Field required"),
        ({"model": "claude-x", "max_tokens": 10}, "messages: Field required"),
        (
            messages_request(messages=[user("Hi")], frequency_penalty=1),
            "frequency_penalty: Extra inputs are not permitted",
        ),
        (
            messages_request(messages=[user("Hi")], container="c"),
            "container: This field is not supported by this gateway.",
        ),
        (
            messages_request(messages=[{"role": "tool", "content": "x"}]),
            "messages.0.role: Input should be 'user', 'assistant' or 'system'",
        ),
        (
            messages_request(
                messages=[{"role": "system", "content": [{"type": "image", "source": {}}]}, user("Hi")]
            ),
            "messages.0.content.0: Input should be a text block",
        ),
        (messages_request(messages=[{"role": "user"}]), "messages.0.content: Field required"),
        (
            messages_request(messages=[{"role": "user", "content": "x", "name": "bob"}]),
            "messages.0.name: Extra inputs are not permitted",
        ),
        (messages_request(messages=[user([])]), "messages.0.content: List should have at least 1 item"),
        (
            messages_request(messages=[user("Hi")], temperature=1.5),
            "temperature: Input should be between 0 and 1",
        ),
        (
            messages_request(messages=[user("Hi")], metadata={"user_id": "u", "team": "t"}),
            "metadata.team: Extra inputs are not permitted",
        ),
        (
            messages_request(messages=[user("Hi")], thinking={"type": "enabled", "budget_tokens": 2048}),
            "thinking:",
        ),
        (
            messages_request(
                messages=[user("Hi")], tools=[{"type": "web_search_20250305", "name": "web_search"}]
            ),
            "tools.0:",
        ),
        (
            messages_request(messages=[user("Hi")], tools=[{"name": "f"}]),
            "tools.0.input_schema: Field required",
        ),
        (messages_request(messages=[user("Hi")], tool_choice={"type": "sometimes"}), "tool_choice.type:"),
        (
            messages_request(
                messages=[
                    user(
                        [
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/bmp", "data": "x"},
                            }
                        ]
                    )
                ]
            ),
            "messages.0.content.0.source.media_type:",
        ),
        (
            messages_request(
                messages=[
                    user(
                        [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "image", "source": {}}],
                            }
                        ]
                    )
                ]
            ),
            "messages.0.content.0.content.0.type:",
        ),
        (
            messages_request(messages=[user([{"type": "tool_use", "id": "t", "name": "f", "input": {}}])]),
            "messages.0.content.0.type:",
        ),
        (
            messages_request(messages=[user("Hi")], output_config={"format": {"type": "json_object"}}),
            "output_config.format:",
        ),
    ],
)
def test_invalid_messages_requests_are_rejected_like_anthropic(body: dict[str, Any], message: str) -> None:
    with pytest.raises(GatewayError) as caught:
        decode_messages_request(body)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    assert caught.value.message.startswith(message), caught.value.message


def test_a_decoded_request_encodes_back_to_a_valid_anthropic_body() -> None:
    original = messages_request(
        system="Be brief.",
        tools=[ANTHROPIC_WEATHER],
        tool_choice={"type": "auto"},
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
        messages=[
            user("Weather?"),
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {"city": "Paris"}}
                ],
            },
            user(
                [
                    {"type": "tool_result", "tool_use_id": "toolu_A", "content": "Sunny"},
                    {"type": "text", "text": "Thanks"},
                ]
            ),
        ],
        stream=True,
    )
    again = encode_chat_request(decode_messages_request(original), model="claude-sonnet-4-6")
    validate(again)
    assert again == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 256,
        "system": "Be brief.",
        "tools": [ANTHROPIC_WEATHER],
        "tool_choice": {"type": "auto"},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "stream": True,
        "messages": [
            user("Weather?"),
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {"city": "Paris"}}
                ],
            },
            user(
                [
                    {"type": "tool_result", "tool_use_id": "toolu_A", "content": "Sunny"},
                    {"type": "text", "text": "Thanks"},
                ]
            ),
        ],
    }


# --- encode_messages_response ---------------------------------------------------------------------------


def completion(message: dict[str, Any], finish_reason: str = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": CREATED,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 5,
            "total_tokens": 35,
            "prompt_tokens_details": {"cached_tokens": 10},
        },
        **extra,
    }


def test_a_chat_completion_becomes_an_anthropic_message() -> None:
    assert encode_messages_response(completion({"content": "Hello!"}), model="claude-alias") == {
        "id": "msg_abc123",
        "type": "message",
        "role": "assistant",
        "model": "claude-alias",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 10,
            "output_tokens": 5,
        },
    }


def test_tool_calls_become_tool_use_blocks() -> None:
    message = encode_messages_response(
        completion(
            {
                "content": None,
                "tool_calls": [
                    call("call_1", "get_weather", '{"city": "Paris"}'),
                    call("call_2", "get_time", ""),
                ],
            },
            "tool_calls",
        ),
        model=MODEL,
    )
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use"


def test_invalid_tool_arguments_from_upstream_are_a_502() -> None:
    with pytest.raises(GatewayError) as caught:
        encode_messages_response(
            completion({"tool_calls": [call("c", "f", "{broken")]}, "tool_calls"), model=MODEL
        )
    assert caught.value.status == 502


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_finish_reasons(finish_reason: str | None, stop_reason: str) -> None:
    message = encode_messages_response(completion({"content": "x"}, finish_reason), model=MODEL)  # type: ignore[arg-type]
    assert message["stop_reason"] == stop_reason


def test_a_refusal_is_text_with_the_refusal_stop_reason() -> None:
    message = encode_messages_response(
        completion({"content": None, "refusal": "I can't help with that."}), model=MODEL
    )
    assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert message["stop_reason"] == "refusal"


def test_anthropic_ids_are_kept() -> None:
    assert (
        encode_messages_response(completion({"content": "x"}, id="msg_01keep"), model=MODEL)["id"]
        == "msg_01keep"
    )


# --- MessagesStreamEncoder ------------------------------------------------------------------------------


def openai_chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


OPENAI_USAGE = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": CREATED,
    "model": "gpt-4o-mini",
    "choices": [],
    "usage": {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 4},
    },
}


def parse_frames(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    parser = SSEParser()
    events = parser.feed(b"".join(frames))
    assert parser.flush() == []
    return [(name or "", orjson.loads(data)) for name, data in events]


def encode_stream(chunks: list[dict[str, Any]], *, finish: bool = True) -> list[tuple[str, dict[str, Any]]]:
    encoder = MessagesStreamEncoder(model="claude-alias", message_id="msg_gw1")
    frames = [frame for item in chunks for frame in encoder.feed(item)]
    if finish:
        frames += encoder.finish()
    return parse_frames(frames)


MESSAGE_START_OUT = (
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_gw1",
            "type": "message",
            "role": "assistant",
            "model": "claude-alias",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        },
    },
)


def test_a_text_stream_encodes_to_anthropics_event_sequence() -> None:
    events = encode_stream(
        [
            openai_chunk({"role": "assistant", "content": ""}),
            openai_chunk({"content": "Hel"}),
            openai_chunk({"content": "lo"}),
            openai_chunk({}, "stop"),
            OPENAI_USAGE,
        ]
    )
    assert events == [
        MESSAGE_START_OUT,
        block_start(0, {"type": "text", "text": ""}),
        ("ping", {"type": "ping"}),
        delta_event(0, {"type": "text_delta", "text": "Hel"}),
        delta_event(0, {"type": "text_delta", "text": "lo"}),
        block_stop(0),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {
                    "input_tokens": 6,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 4,
                    "output_tokens": 2,
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_frames_are_byte_exact() -> None:
    encoder = MessagesStreamEncoder(model="m", message_id="msg_1")
    frames = encoder.feed(openai_chunk({"content": "Hi"}))
    assert frames[1] == (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
    )
    assert frames[2] == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_tool_calls_get_their_own_blocks_after_the_text_block() -> None:
    events = encode_stream(
        [
            openai_chunk({"role": "assistant", "content": "Checking."}),
            openai_chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            openai_chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"},
                        }
                    ]
                }
            ),
            openai_chunk({}, "tool_calls"),
            OPENAI_USAGE,
        ]
    )
    assert [(name, data.get("index")) for name, data in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("ping", None),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[5][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {},
    }
    assert events[6][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":'}
    assert events[12][1]["delta"]["stop_reason"] == "tool_use"


def test_the_sdk_accumulates_the_encoded_stream_into_a_message() -> None:
    events = encode_stream(
        [
            openai_chunk({"role": "assistant", "content": "Checking."}),
            openai_chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "function": {"name": "get_weather", "arguments": '{"city"'},
                        }
                    ]
                }
            ),
            openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Paris"}'}}]}),
            openai_chunk({}, "tool_calls"),
            OPENAI_USAGE,
        ]
    )
    snapshot = None
    buffers: dict[int, bytes] = {}
    for name, data in events:
        if name != "ping":
            snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=buffers)  # type: ignore[arg-type]
    assert snapshot is not None
    assert snapshot.to_dict()["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert (snapshot.stop_reason, snapshot.usage.input_tokens, snapshot.usage.output_tokens) == (
        "tool_use",
        6,
        2,
    )


def test_finish_ends_a_stream_without_a_usage_chunk() -> None:
    events = encode_stream([openai_chunk({"content": "Hi"}), openai_chunk({}, "length")])
    assert [name for name, _ in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[-2][1]["usage"]["output_tokens"] == 0


def test_usage_and_finish_in_one_chunk_end_the_message_at_once() -> None:
    encoder = MessagesStreamEncoder(model="m", message_id="msg_1")
    encoder.feed(openai_chunk({"content": "Hi"}))
    frames = encoder.feed({**openai_chunk({}, "stop"), "usage": OPENAI_USAGE["usage"]})
    assert [name for name, _ in parse_frames(frames)] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert encoder.finish() == []
    assert encoder.feed(openai_chunk({"content": "late"})) == []


def test_an_empty_answer_still_makes_a_whole_message() -> None:
    assert [name for name, _ in encode_stream([])] == [
        "message_start",
        "ping",
        "message_delta",
        "message_stop",
    ]


def test_a_refusal_delta_is_text_with_the_refusal_stop_reason() -> None:
    events = encode_stream([openai_chunk({"refusal": "No."}), openai_chunk({}, "stop"), OPENAI_USAGE])
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "No."}
    assert events[-2][1]["delta"]["stop_reason"] == "refusal"


def test_the_error_frame() -> None:
    encoder = MessagesStreamEncoder(model="m", message_id="msg_1")
    frame = encoder.error(GatewayError(503, "Upstream overloaded.", code="overloaded"))
    assert frame == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Upstream overloaded."}}\n\n'
    )
    assert encoder.finish() == []


# --- encode_error ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "error_type"),
    [
        (400, None, "invalid_request_error"),
        (401, "invalid_api_key", "authentication_error"),
        (402, None, "billing_error"),
        (403, None, "permission_error"),
        (404, "model_not_found", "not_found_error"),
        (413, None, "request_too_large"),
        (422, None, "invalid_request_error"),
        (429, "rate_limit_exceeded", "rate_limit_error"),
        (500, None, "api_error"),
        (502, "upstream_error", "api_error"),
        (503, None, "api_error"),
        (503, "overloaded", "overloaded_error"),
        (504, "upstream_timeout", "timeout_error"),
        (529, None, "overloaded_error"),
    ],
)
def test_encode_error(status: int, code: str | None, error_type: str) -> None:
    body = orjson.loads(encode_error(GatewayError(status, "Something.", code=code)))
    assert body == {"type": "error", "error": {"type": error_type, "message": "Something."}}


def test_encode_error_with_a_request_id() -> None:
    body = orjson.loads(encode_error(GatewayError(400, "Bad."), request_id="req_123"))
    assert body["request_id"] == "req_123"
