"""The Gemini dialect: OpenAI chat/embeddings bodies to Gemini's and Gemini's answers, streams and errors back."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from gateway_core.dialects.gemini import (
    StreamDecoder,
    decode_chat_response,
    decode_embeddings_response,
    decode_error,
    encode_chat_request,
    encode_embeddings_request,
    estimate_embedding_tokens,
)
from gateway_core.errors import GatewayError
from gateway_core.types import Usage
from tests.fakes.gemini_upstream import INVALID_KEY_MESSAGE, google_error, invalid_key_details, quota_details

USER = {"role": "user", "content": "Hi"}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
TIME_TOOL: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}


def encode(**body: Any) -> dict[str, Any]:
    body.setdefault("messages", [USER])
    return encode_chat_request({"model": "gemini-2.5-flash", **body})


def rejected(body: dict[str, Any], **kwargs: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        encode_chat_request(body, **kwargs)
    assert caught.value.status == 400
    return caught.value


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- requests: messages -----------------------------------------------------------------------------


def test_a_plain_conversation_becomes_contents_with_a_system_instruction() -> None:
    body = {
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Bonjour"},
            {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
            {"role": "user", "content": "And the weather?"},
        ],
    }
    assert encode_chat_request(body) == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hello"}]},
            {"role": "model", "parts": [{"text": "Bonjour"}]},
            {"role": "user", "parts": [{"text": "How are you?"}, {"text": "And the weather?"}]},
        ],
    }


def test_empty_texts_are_left_out_and_empty_turns_dropped() -> None:
    request = encode(
        messages=[
            {"role": "system", "content": ""},
            {"role": "user", "content": ""},
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": None},
        ]
    )
    assert request == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (None, "messages"),
        ([], "messages"),
        (["Hi"], "messages[0]"),
        ([{"role": "system", "content": "Be brief."}], "messages"),
        ([{"role": "wizard", "content": "Hi"}], "messages[0].role"),
        ([{"role": "user", "content": 42}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "video", "video": "x"}]}], "messages[0].content[0].type"),
        ([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}],
         "messages[0].content[0]"),
        ([USER, {"role": "tool", "tool_call_id": "call_unknown", "content": "20"}], "messages[1].tool_call_id"),
        ([USER, {"role": "assistant", "tool_calls": [call("c1", "f", "{not json")]}], "messages[1].tool_calls[0].function.arguments"),
        ([USER, {"role": "assistant", "tool_calls": [call("c1", "f", "[1, 2]")]}], "messages[1].tool_calls[0].function.arguments"),
        ([USER, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {}}]}],
         "messages[1].tool_calls[0].function.name"),
        ([{"role": "function", "content": "20"}], "messages[0].name"),
    ],
)  # fmt: skip
def test_malformed_messages_are_a_400_naming_the_field(messages: Any, param: str) -> None:
    assert rejected({"model": "m", "messages": messages}).param == param


def test_images_audio_and_files_become_inline_or_file_data() -> None:
    png = base64.b64encode(b"\x89PNG fake").decode()
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?size=large"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/photo.webp"}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/scan.pdf"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/render?id=7"}},
        {"type": "image_url", "image_url": {"url": "data:text/plain,hello%20world"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
        {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "b.pdf"}},
    ]
    parts = encode(messages=[{"role": "user", "content": content}])["contents"][0]["parts"]
    assert parts == [
        {"text": "What is in these?"},
        {"inlineData": {"mimeType": "image/png", "data": png}},
        {"fileData": {"fileUri": "https://example.com/cat.JPG?size=large", "mimeType": "image/jpeg"}},
        {"fileData": {"fileUri": "https://example.com/photo.webp", "mimeType": "image/webp"}},
        {"fileData": {"fileUri": "gs://bucket/scan.pdf", "mimeType": "application/pdf"}},
        {"fileData": {"fileUri": "https://example.com/render?id=7"}},
        {"inlineData": {"mimeType": "text/plain", "data": base64.b64encode(b"hello world").decode()}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "file", "file": {"file_id": "file-abc"}}, "messages[0].content[0].file"),
        ({"type": "file", "file": {"file_data": "JVBERi0="}}, "messages[0].content[0].file"),
        ({"type": "image_url", "image_url": {}}, "messages[0].content[0].image_url.url"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64"}}, "messages[0].content[0]"),
        ({"type": "input_audio", "input_audio": {"data": "UklGRg=="}}, "messages[0].content[0].input_audio"),
    ],
)
def test_unusable_media_parts_are_a_400(part: dict[str, Any], param: str) -> None:
    assert rejected({"model": "m", "messages": [{"role": "user", "content": [part]}]}).param == param


# --- requests: tools and tool calls -----------------------------------------------------------------


def test_tools_are_declared_with_their_json_schema_untouched() -> None:
    request = encode(tools=[WEATHER_TOOL, TIME_TOOL])
    assert request["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
                },
                {"name": "get_time"},
            ]
        }
    ]
    assert "toolConfig" not in request


@pytest.mark.parametrize(
    ("tool_choice", "config", "declared"),
    [
        ("auto", {"mode": "AUTO"}, ["get_weather", "get_time"]),
        ("none", {"mode": "NONE"}, ["get_weather", "get_time"]),
        ("required", {"mode": "ANY"}, ["get_weather", "get_time"]),
        ({"type": "function", "function": {"name": "get_time"}},
         {"mode": "ANY", "allowedFunctionNames": ["get_time"]}, ["get_weather", "get_time"]),
        ({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [TIME_TOOL]}},
         {"mode": "ANY", "allowedFunctionNames": ["get_time"]}, ["get_time"]),
        ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [WEATHER_TOOL]}},
         {"mode": "AUTO"}, ["get_weather"]),
    ],
)  # fmt: skip
def test_tool_choice_becomes_a_function_calling_mode(
    tool_choice: Any, config: dict[str, Any], declared: list[str]
) -> None:
    request = encode(tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=tool_choice)
    assert request["toolConfig"] == {"functionCallingConfig": config}
    assert [d["name"] for d in request["tools"][0]["functionDeclarations"]] == declared


def test_legacy_functions_and_function_call_are_understood() -> None:
    request = encode(functions=[TIME_TOOL["function"]], function_call={"name": "get_time"})
    assert request["tools"] == [{"functionDeclarations": [{"name": "get_time"}]}]
    assert request["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"description": "nameless"}}]},
            "tools[0].function.name",
        ),
        ({"tools": {"type": "function"}}, "tools"),
    ],
)
def test_bad_tool_settings_are_a_400(body: dict[str, Any], param: str) -> None:
    assert rejected({"model": "m", "messages": [USER], **body}).param == param


def test_parallel_tool_calls_and_their_results_round_trip_with_names_recovered() -> None:
    messages = [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                call("call_w", "get_weather", '{"city": "Paris"}'),
                call("call_t", "get_time", ""),
            ],
        },
        {"role": "tool", "tool_call_id": "call_t", "content": "12:00"},
        {"role": "tool", "tool_call_id": "call_w", "content": '{"temp": 20, "unit": "C"}'},
        {"role": "user", "content": "Thanks!"},
    ]
    assert encode(messages=messages, tools=[WEATHER_TOOL, TIME_TOOL])["contents"] == [
        {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Let me check."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_time", "response": {"output": "12:00"}}},
                {"functionResponse": {"name": "get_weather", "response": {"temp": 20, "unit": "C"}}},
                {"text": "Thanks!"},
            ],
        },
    ]


def test_tool_results_given_as_text_parts_and_legacy_function_messages() -> None:
    messages = [
        USER,
        {"role": "assistant", "function_call": {"name": "get_time", "arguments": "{}"}},
        {"role": "function", "name": "get_time", "content": [{"type": "text", "text": "noon"}]},
    ]
    assert encode(messages=messages)["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "get_time", "args": {}}}]},
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_time", "response": {"output": "noon"}}}],
        },
    ]


def test_thought_signatures_come_back_from_the_tool_call_id_or_extra_content() -> None:
    messages = [
        USER,
        {
            "role": "assistant",
            "tool_calls": [
                call("call_a__thought__CiQBsig+/nature==", "get_weather", '{"city": "Oslo"}'),
                {
                    **call("call_b", "get_time", "{}"),
                    "extra_content": {"google": {"thought_signature": "EgQx"}},
                },
                call("call_c", "get_time", "{}"),
            ],
        },
        {"role": "tool", "tool_call_id": "call_a__thought__CiQBsig+/nature==", "content": "cold"},
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
        {"role": "tool", "tool_call_id": "call_c", "content": "noon"},
    ]
    model_turn = encode(messages=messages)["contents"][1]
    assert model_turn["parts"] == [
        {
            "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
            "thoughtSignature": "CiQBsig+/nature==",
        },
        {"functionCall": {"name": "get_time", "args": {}}, "thoughtSignature": "EgQx"},
        {"functionCall": {"name": "get_time", "args": {}}},
    ]


# --- requests: parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "config"),
    [
        ({"max_tokens": 10}, {"maxOutputTokens": 10}),
        ({"max_completion_tokens": 20, "max_tokens": 10}, {"maxOutputTokens": 20}),
        ({"temperature": 0.3, "top_p": 0.9, "top_k": 40}, {"temperature": 0.3, "topP": 0.9, "topK": 40}),
        ({"seed": 7, "n": 2}, {"seed": 7, "candidateCount": 2}),
        ({"presence_penalty": 0.5, "frequency_penalty": -0.5}, {"presencePenalty": 0.5, "frequencyPenalty": -0.5}),
        ({"stop": "END"}, {"stopSequences": ["END"]}),
        ({"stop": ["a", "b"]}, {"stopSequences": ["a", "b"]}),
        ({"logprobs": True, "top_logprobs": 3}, {"responseLogprobs": True, "logprobs": 3}),
        ({"logprobs": False}, None),
        ({"response_format": {"type": "text"}}, None),
        ({"response_format": {"type": "json_object"}}, {"responseMimeType": "application/json"}),
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "city", "strict": True,
            "schema": {"type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": False},
        }}}, {"responseMimeType": "application/json", "responseJsonSchema": {
            "type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": False}}),
        ({"reasoning_effort": "low"}, {"thinkingConfig": {"thinkingBudget": 1024}}),
        ({"reasoning_effort": "none"}, {"thinkingConfig": {"thinkingBudget": 0}}),
        ({"temperature": None, "user": "u-1", "metadata": {"a": "b"}, "store": False, "stream": True,
          "stream_options": {"include_usage": True}, "parallel_tool_calls": True, "service_tier": "auto",
          "modalities": ["text"], "safety_identifier": "s", "prompt_cache_key": "k"}, None),
    ],
)  # fmt: skip
def test_generation_parameters_map_to_generation_config(params: dict[str, Any], config: Any) -> None:
    request = encode(**params)
    assert request.get("generationConfig") == config


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"logit_bias": {"123": 5}}, "logit_bias"),
        ({"parallel_tool_calls": False, "tools": [WEATHER_TOOL]}, "parallel_tool_calls"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"tools": [WEATHER_TOOL, {"type": "custom", "custom": {"name": "grep"}}]}, "tools[1]"),
        ({"some_future_parameter": 1}, "some_future_parameter"),
    ],
)
def test_parameters_gemini_cannot_honour_are_a_400_unless_dropped(params: dict[str, Any], param: str) -> None:
    body = {"model": "m", "messages": [USER], **params}
    error = rejected(body)
    assert (error.param, error.code) == (param, "unsupported_parameter")
    assert f"'{param}'" in error.message
    dropped = encode_chat_request(body, drop_params=True)
    assert dropped.get("generationConfig") is None
    if "tools" in params:
        assert [d["name"] for d in dropped["tools"][0]["functionDeclarations"]] == ["get_weather"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"n": True}, "n"),
        ({"stop": [1]}, "stop"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning_effort": {"level": "high"}}, "reasoning_effort"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ],
)
def test_invalid_parameter_values_are_a_400_even_with_drop_params(params: dict[str, Any], param: str) -> None:
    assert rejected({"model": "m", "messages": [USER], **params}, drop_params=True).param == param


# --- answers ----------------------------------------------------------------------------------------


def answer(*candidates: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "candidates": list(candidates),
        "modelVersion": "gemini-2.5-flash",
        "responseId": "abc123",
        **extra,
    }


def candidate(*parts: dict[str, Any], finish: str | None = "STOP", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}, **extra}
    if finish:
        out["finishReason"] = finish
    return out


USAGE_METADATA = {
    "promptTokenCount": 12,
    "cachedContentTokenCount": 4,
    "candidatesTokenCount": 7,
    "thoughtsTokenCount": 5,
    "totalTokenCount": 24,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
}
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 12,
    "total_tokens": 24,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 5},
}


def test_a_text_answer_becomes_a_chat_completion() -> None:
    data = answer(
        candidate({"text": "Let me think", "thought": True}, {"text": "Hello "}, {"text": "there!"}),
        usageMetadata=USAGE_METADATA,
    )
    completion = decode_chat_response(data, model="my-gemini", response_id="chatcmpl-1")
    assert isinstance(completion.pop("created"), int)
    assert completion == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "my-gemini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }


@pytest.mark.parametrize(
    ("metadata", "usage"),
    [
        (None, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}),
        ({"promptTokenCount": 3, "totalTokenCount": 3}, {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}),
        ({"promptTokenCount": 3, "candidatesTokenCount": 2}, {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
        ({"promptTokenCount": 3, "toolUsePromptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 9},
         {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}),
    ],
)  # fmt: skip
def test_usage_counts_absent_fields_as_zero(metadata: Any, usage: dict[str, int]) -> None:
    completion = decode_chat_response(answer(candidate({"text": "x"}), usageMetadata=metadata), model="m")
    assert {k: v for k, v in completion["usage"].items() if not k.endswith("details")} == usage


def test_the_response_id_defaults_to_geminis_own() -> None:
    assert decode_chat_response(answer(candidate({"text": "x"})), model="m")["id"] == "chatcmpl-abc123"
    generated = decode_chat_response({"candidates": [candidate({"text": "x"})]}, model="m")["id"]
    assert generated.startswith("chatcmpl-") and len(generated) > 12


def test_parallel_function_calls_become_tool_calls_with_stable_ids() -> None:
    data = answer(
        candidate(
            {"text": "Checking."},
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": "CiQB+sig/==",
            },
            {"functionCall": {"name": "get_time"}},
            {"functionCall": {"id": "gem-7", "name": "get_time", "args": {"tz": "CET"}}},
        )
    )
    first = decode_chat_response(data, model="m", response_id="chatcmpl-1")
    again = decode_chat_response(data, model="m", response_id="chatcmpl-1")
    other = decode_chat_response(data, model="m", response_id="chatcmpl-2")
    choice = first["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    calls = choice["message"]["tool_calls"]
    assert [(c["type"], c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in calls] == [
        ("function", "get_weather", {"city": "Paris"}),
        ("function", "get_time", {}),
        ("function", "get_time", {"tz": "CET"}),
    ]
    ids = [c["id"] for c in calls]
    assert ids[0].startswith("call_") and ids[0].endswith("__thought__CiQB+sig/==")
    assert ids[1].startswith("call_") and "__thought__" not in ids[1]
    assert ids[2] == "gem-7"
    assert len(set(ids)) == 3
    assert ids == [c["id"] for c in again["choices"][0]["message"]["tool_calls"]]
    assert ids[:2] != [c["id"] for c in other["choices"][0]["message"]["tool_calls"]][:2]


def test_a_tool_call_answer_fed_back_gives_geminis_history_back() -> None:
    """Decode an answer with a signed call, append the result, encode: the model turn is restored."""
    signed = {
        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
        "thoughtSignature": "EgQxMjM0",
    }
    message = decode_chat_response(answer(candidate(signed)), model="m")["choices"][0]["message"]
    assert message["content"] is None
    result = {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": '{"temp": 20}'}
    contents = encode(messages=[USER, message, result])["contents"]
    assert contents[1:] == [
        {"role": "model", "parts": [signed]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 20}}}]},
    ]


@pytest.mark.parametrize(
    ("reason", "tool_call", "expected"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        (None, False, "stop"),
        ("MAX_TOKENS", False, "length"),
        ("MAX_TOKENS", True, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("IMAGE_SAFETY", False, "content_filter"),
        ("LANGUAGE", False, "stop"),
        ("OTHER", False, "stop"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        ("FINISH_REASON_UNSPECIFIED", False, "stop"),
    ],
)
def test_finish_reasons(reason: str | None, tool_call: bool, expected: str) -> None:
    part = {"functionCall": {"name": "f", "args": {}}} if tool_call else {"text": "x"}
    completion = decode_chat_response(answer(candidate(part, finish=reason)), model="m")
    assert completion["choices"][0]["finish_reason"] == expected


def test_candidates_become_choices_by_index() -> None:
    data = answer(candidate({"text": "one"}), candidate({"text": "two"}, index=1))
    choices = decode_chat_response(data, model="m")["choices"]
    assert [(c["index"], c["message"]["content"]) for c in choices] == [(0, "one"), (1, "two")]


def test_a_blocked_prompt_is_a_content_filter_answer() -> None:
    data = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}}
    completion = decode_chat_response(data, model="m")
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "refusal": None},
            "logprobs": None,
            "finish_reason": "content_filter",
        }
    ]
    assert completion["usage"]["prompt_tokens"] == 5


def test_an_answer_without_candidates_or_block_reason_is_a_502() -> None:
    with pytest.raises(GatewayError) as caught:
        decode_chat_response({"usageMetadata": {"promptTokenCount": 5}}, model="m")
    assert caught.value.status == 502


def test_logprobs_are_translated() -> None:
    result = {
        "topCandidates": [
            {
                "candidates": [
                    {"token": "Hi", "logProbability": -0.1},
                    {"token": "Hey", "logProbability": -2.5},
                ]
            },
            {"candidates": [{"token": "!", "logProbability": -0.01}]},
        ],
        "chosenCandidates": [
            {"token": "Hi", "logProbability": -0.1},
            {"token": "!", "logProbability": -0.01},
        ],
    }
    data = answer(candidate({"text": "Hi!"}, logprobsResult=result, avgLogprobs=-0.05))
    assert decode_chat_response(data, model="m")["choices"][0]["logprobs"] == {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.1,
                "bytes": [72, 105],
                "top_logprobs": [
                    {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
                    {"token": "Hey", "logprob": -2.5, "bytes": [72, 101, 121]},
                ],
            },
            {
                "token": "!",
                "logprob": -0.01,
                "bytes": [33],
                "top_logprobs": [{"token": "!", "logprob": -0.01, "bytes": [33]}],
            },
        ],
        "refusal": None,
    }


# --- streams ----------------------------------------------------------------------------------------


def chunk(
    delta: dict[str, Any], finish: str | None = None, index: int = 0, rid: str = "chatcmpl-s"
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "my-gemini",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "my-gemini",
        "choices": [],
        "usage": usage,
    }


def decoder() -> StreamDecoder:
    return StreamDecoder(model="my-gemini", response_id="chatcmpl-s", created=1700000000)


def event(
    *parts: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    data = answer(candidate(*parts, finish=finish))
    if usage is not None:
        data["usageMetadata"] = usage
    return data


ROLE = {"role": "assistant", "content": ""}


def test_a_text_stream_chunk_by_chunk() -> None:
    stream = decoder()
    partial = {"promptTokenCount": 12, "totalTokenCount": 12}
    assert stream.feed(event({"text": "Hel"}, usage=partial)) == [chunk(ROLE), chunk({"content": "Hel"})]
    assert stream.usage == Usage(prompt_tokens=12, total_tokens=12)
    assert stream.feed(event({"text": "thinking...", "thought": True}, usage=partial)) == []
    assert stream.feed(event({"text": "lo"}, {"text": " you"}, usage=partial)) == [
        chunk({"content": "lo"}),
        chunk({"content": " you"}),
    ]
    assert stream.feed(event({"text": ""}, finish="STOP", usage=USAGE_METADATA)) == [chunk({}, "stop")]
    assert stream.finish() == [usage_chunk(USAGE)]
    assert stream.usage == Usage(
        prompt_tokens=12, completion_tokens=12, total_tokens=24, cached_tokens=4, reasoning_tokens=5
    )


def test_a_stream_of_parallel_function_calls() -> None:
    stream = decoder()
    weather = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "EgQx"}
    time_call = {"functionCall": {"name": "get_time", "args": {}}}
    chunks = stream.feed(event({"text": "Checking."}))
    chunks += stream.feed(event(weather))
    chunks += stream.feed(
        event(time_call, finish="STOP", usage={"promptTokenCount": 9, "candidatesTokenCount": 10})
    )
    calls = decode_chat_response(answer(candidate(weather, time_call)), model="m", response_id="chatcmpl-s")
    weather_id, time_id = (c["id"] for c in calls["choices"][0]["message"]["tool_calls"])
    assert weather_id.endswith("__thought__EgQx")
    assert chunks == [
        chunk(ROLE),
        chunk({"content": "Checking."}),
        chunk({"tool_calls": [{"index": 0, "id": weather_id, "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": time_id, "type": "function",
                               "function": {"name": "get_time", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
    ]  # fmt: skip
    assert stream.finish() == [
        usage_chunk(
            {
                "prompt_tokens": 9,
                "completion_tokens": 10,
                "total_tokens": 19,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            }
        )
    ]


def test_a_stream_cut_by_max_tokens_finishes_with_length() -> None:
    stream = decoder()
    chunks = stream.feed(event({"text": "Once upon"}, finish="MAX_TOKENS"))
    assert chunks == [chunk(ROLE), chunk({"content": "Once upon"}), chunk({}, "length")]
    assert stream.feed(event({"text": " a time"})) == []  # nothing after the finish
    assert stream.finish() == []  # no usage reported


def test_a_blocked_prompt_in_a_stream() -> None:
    stream = decoder()
    data = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 4}}
    assert stream.feed(data) == [chunk(ROLE), chunk({}, "content_filter")]
    assert stream.finish()[0]["usage"]["prompt_tokens"] == 4


def test_a_stream_filtered_midway() -> None:
    stream = decoder()
    assert stream.feed(event({"text": "Sure, "})) == [chunk(ROLE), chunk({"content": "Sure, "})]
    assert stream.feed(answer({"finishReason": "SAFETY"})) == [chunk({}, "content_filter")]


def test_a_stream_with_two_candidates() -> None:
    stream = decoder()
    first = stream.feed(
        answer(candidate({"text": "A"}, finish=None), candidate({"text": "B"}, finish=None, index=1))
    )
    second = stream.feed(answer(candidate({"text": "a"}), candidate({"text": "b"}, index=1)))
    assert first == [
        chunk(ROLE),
        chunk({"content": "A"}),
        chunk(ROLE, index=1),
        chunk({"content": "B"}, index=1),
    ]
    assert second == [
        chunk({"content": "a"}),
        chunk({}, "stop"),
        chunk({"content": "b"}, index=1),
        chunk({}, "stop", index=1),
    ]
    assert stream.finish() == []


def test_a_stream_carries_logprobs_on_its_text_chunks() -> None:
    stream = decoder()
    result = {"chosenCandidates": [{"token": "Hi", "logProbability": -0.5}], "topCandidates": []}
    chunks = stream.feed(answer(candidate({"text": "Hi"}, logprobsResult=result)))
    assert chunks[1]["choices"][0]["logprobs"] == {
        "content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}],
        "refusal": None,
    }


@pytest.mark.parametrize(
    "events",
    [
        [],
        [event({"text": "Hel"}, usage={"promptTokenCount": 3})],
        [answer(candidate({"text": "A"}), candidate({"text": "B"}, finish=None, index=1))],
    ],
)
def test_a_stream_that_ends_before_its_finish_reason_is_a_502(events: list[dict[str, Any]]) -> None:
    stream = decoder()
    for data in events:
        stream.feed(data)
    with pytest.raises(GatewayError) as caught:
        stream.finish()
    assert caught.value.status == 502
    if events and "usageMetadata" in events[0]:
        assert stream.usage == Usage(prompt_tokens=3, total_tokens=3)


# --- embeddings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "model", "expected"),
    [
        ({"input": "hello"}, "text-embedding-004",
         {"requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello"}]}}]}),
        ({"input": ["a", "b"], "dimensions": 256, "encoding_format": "base64", "user": "u"}, "gemini-embedding-001",
         {"requests": [
             {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 256},
             {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 256},
         ]}),
        ({"input": "x"}, "models/text-embedding-004",
         {"requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "x"}]}}]}),
        ({"input": "x"}, "publishers/google/models/text-embedding-005",
         {"requests": [{"model": "publishers/google/models/text-embedding-005", "content": {"parts": [{"text": "x"}]}}]}),
    ],
)  # fmt: skip
def test_embeddings_requests(body: dict[str, Any], model: str, expected: dict[str, Any]) -> None:
    assert encode_embeddings_request({"model": "alias", **body}, model=model) == expected


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [1, 2, 3]}, "input"),
        ({"input": [[1, 2], [3]]}, "input"),
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": ["a", ""]}, "input"),
        ({}, "input"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "dimensions": "256"}, "dimensions"),
        ({"input": "a", "truncate": "END"}, "truncate"),
    ],
)
def test_bad_embeddings_requests_are_a_400(body: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        encode_embeddings_request(body, model="text-embedding-004")
    assert (caught.value.status, caught.value.param) == (400, param)


def test_unsupported_embeddings_parameters_can_be_dropped() -> None:
    request = encode_embeddings_request({"input": "a", "truncate": "END"}, model="m", drop_params=True)
    assert request == {"requests": [{"model": "models/m", "content": {"parts": [{"text": "a"}]}}]}


VECTORS = [[0.25, -1.0, 0.1], [1e-3, 2.5, -0.333]]


@pytest.mark.parametrize("encoding_format", [None, "float"])
def test_float_embeddings(encoding_format: str | None) -> None:
    data = {"embeddings": [{"values": v} for v in VECTORS]}
    assert decode_embeddings_response(
        data, model="emb", encoding_format=encoding_format, prompt_tokens=6
    ) == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": VECTORS[0]},
            {"object": "embedding", "index": 1, "embedding": VECTORS[1]},
        ],
        "model": "emb",
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }


def test_base64_embeddings_decode_as_little_endian_float32() -> None:
    data = {"embeddings": [{"values": v} for v in VECTORS]}
    items = decode_embeddings_response(data, model="emb", encoding_format="base64")["data"]
    for item, vector in zip(items, VECTORS, strict=True):
        raw = base64.b64decode(item["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert decoded == pytest.approx(vector, rel=1e-6)
        assert raw == struct.pack("<3f", *vector)


def test_embeddings_usage_prefers_geminis_count_and_reads_embed_content_answers() -> None:
    data = {"embedding": {"values": [0.5]}, "usageMetadata": {"promptTokenCount": 9}}
    decoded = decode_embeddings_response(data, model="emb", encoding_format="float", prompt_tokens=2)
    assert decoded["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5]}]
    assert decoded["usage"] == {"prompt_tokens": 9, "total_tokens": 9}


@pytest.mark.parametrize("data", [{}, {"embeddings": [{"value": [1]}]}, {"embeddings": "x"}])
def test_malformed_embeddings_answers_are_a_502(data: dict[str, Any]) -> None:
    with pytest.raises(GatewayError) as caught:
        decode_embeddings_response(data, model="emb", encoding_format=None)
    assert caught.value.status == 502


def test_embedding_token_estimate() -> None:
    assert estimate_embedding_tokens({"input": "abcdefgh"}) == 2
    assert estimate_embedding_tokens({"input": ["abc", "abcde"]}) == 3
    assert estimate_embedding_tokens({"input": [1, 2]}) == 0


# --- errors -----------------------------------------------------------------------------------------


def body_of(code: int, message: str | None = None, **kwargs: Any) -> bytes:
    return orjson.dumps(google_error(code, message, **kwargs))


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected_status", "code", "retry_after"),
    [
        (400, body_of(400, INVALID_KEY_MESSAGE, details=invalid_key_details()), {}, 502, "upstream_auth_error", None),
        (400, body_of(400, "API key not valid. Please pass a valid API key."), {}, 502, "upstream_auth_error", None),
        (400, b"[" + body_of(400, INVALID_KEY_MESSAGE, details=invalid_key_details()) + b"]", {}, 502,
         "upstream_auth_error", None),
        (400, body_of(400, "* GenerateContentRequest.contents: contents is not specified\n"), {}, 400,
         "invalid_argument", None),
        (400, body_of(400, "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."),
         {}, 400, "context_length_exceeded", None),
        (400, body_of(400, "User location is not supported for the API use.", status="FAILED_PRECONDITION"), {}, 502,
         "upstream_precondition_failed", None),
        (401, body_of(401, "Request had invalid authentication credentials."), {}, 502, "upstream_auth_error", None),
        (403, body_of(403, "Permission denied: Consumer 'api_key:AIzaSyD-secret-key-0123456789abcdef' has been "
                           "suspended."), {}, 502, "upstream_auth_error", None),
        (404, body_of(404, "models/gemini-9 is not found for API version v1beta."), {}, 502,
         "upstream_model_not_found", None),
        (429, body_of(429, details=quota_details("gemini-2.0-flash", "17s")), {}, 429, "rate_limit_exceeded", "17"),
        (429, body_of(429, details=quota_details("gemini-2.0-flash", "2.300s")), {}, 429, "rate_limit_exceeded", "3"),
        (429, body_of(429, details=quota_details("gemini-2.0-flash", "0.2s")), {}, 429, "rate_limit_exceeded", "1"),
        (429, body_of(429), {"retry-after": "5"}, 429, "rate_limit_exceeded", "5"),
        (429, body_of(429), {}, 429, "rate_limit_exceeded", None),
        (500, body_of(500), {}, 502, "upstream_error", None),
        (503, body_of(503), {}, 503, "upstream_unavailable", None),
        (503, body_of(503), {"retry-after": "30"}, 503, "upstream_unavailable", "30"),
        (504, body_of(504), {}, 504, "upstream_timeout", None),
        (502, b"<html>Bad Gateway</html>", {}, 502, "upstream_error", None),
    ],
)  # fmt: skip
def test_error_mapping(
    status: int,
    body: bytes,
    headers: dict[str, str],
    expected_status: int,
    code: str,
    retry_after: str | None,
) -> None:
    error = decode_error(status, body, headers)
    assert (error.status, error.code, error.headers.get("retry-after")) == (
        expected_status,
        code,
        retry_after,
    )
    assert "AIza" not in error.message


def test_client_errors_keep_googles_message() -> None:
    message = 'Invalid JSON payload received. Unknown name "foo": Cannot find field.'
    error = decode_error(400, body_of(400, message), {})
    assert (error.message, error.type) == (message, "invalid_request_error")


def test_rate_limit_and_server_errors_describe_themselves() -> None:
    limited = decode_error(429, body_of(429), {})
    assert limited.type == "rate_limit_error"
    assert "quota" in limited.message
    assert "overloaded" in decode_error(503, body_of(503), {}).message
    assert decode_error(404, body_of(404, "models/x is not found"), {}).message.endswith(
        "models/x is not found"
    )


def test_a_key_quoted_in_a_client_error_is_redacted() -> None:
    error = decode_error(400, body_of(400, "Bad value near AIzaSyD-secret-key-0123456789abcdef here"), {})
    assert error.status == 400
    assert error.message == "Bad value near [redacted] here"
