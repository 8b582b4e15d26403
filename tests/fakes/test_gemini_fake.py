"""The fake Gemini API, proven against the official ``google-genai`` SDK and driven by the Gemini dialect.

The SDK tests show the fake's shapes are the ones Google's own client reads and writes; the dialect
tests show the gateway's bodies pass the fake's strict validation and its answers decode.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from google import genai
from google.genai import errors, types

from gateway_core.dialects.gemini import (
    StreamDecoder,
    decode_chat_response,
    decode_embeddings_response,
    decode_error,
    encode_chat_request,
    encode_embeddings_request,
)
from gateway_core.errors import GatewayError
from gateway_core.sse import SSEParser
from tests.fakes.gemini_upstream import DEFAULT_API_KEY, FakeGemini, Reply
from tests.fakes.openai_upstream import embedding_for

WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="The weather in a city.",
    parameters=types.Schema(
        type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)}
    ),
)


@pytest.fixture(scope="module")
def gemini_server() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


@pytest.fixture
def fake(gemini_server: FakeGemini) -> Iterator[FakeGemini]:
    gemini_server.reset()
    yield gemini_server
    gemini_server.reset()


def sdk(fake: FakeGemini, api_key: str = DEFAULT_API_KEY, version: str | None = None) -> genai.Client:
    options = types.HttpOptions(
        base_url=fake.url, api_version=version, retry_options=types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key=api_key, http_options=options)


@pytest.fixture
def client(fake: FakeGemini) -> Iterator[genai.Client]:
    with sdk(fake) as sdk_client:
        yield sdk_client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"x-goog-api-key": DEFAULT_API_KEY}) as session:
        yield session


async def post(
    http: aiohttp.ClientSession, fake: FakeGemini, target: str, body: Any, **params: str
) -> tuple[int, Any]:
    async with http.post(f"{fake.base_url}/models/{target}", json=body, params=params) as response:
        return response.status, orjson.loads(await response.read())


# --- the official SDK against the fake --------------------------------------------------------------


def test_sdk_generate_content(fake: FakeGemini, client: genai.Client) -> None:
    response = client.models.generate_content(
        model="gemini-2.5-flash",
        contents="Hello there",
        config=types.GenerateContentConfig(
            system_instruction="Be brief.", temperature=0.2, max_output_tokens=50
        ),
    )
    assert response.text == "Echo: Hello there"
    assert response.candidates is not None and response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.usage_metadata is not None
    # prompt: "Hello there" + "Be brief." (4 words); answer: "Echo: Hello there" (3 words)
    assert (response.usage_metadata.prompt_token_count, response.usage_metadata.candidates_token_count) == (
        4,
        3,
    )
    assert response.response_id and response.model_version == "gemini-2.5-flash"
    (request,) = fake.requests_to("generateContent")
    assert request.headers["x-goog-api-key"] == DEFAULT_API_KEY
    assert request.json["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 50}


def test_sdk_on_v1beta_with_several_candidates(fake: FakeGemini) -> None:
    with sdk(fake, version="v1beta") as client:
        response = client.models.generate_content(
            model="gemini-2.0-flash", contents="Hi", config=types.GenerateContentConfig(candidate_count=2)
        )
    assert response.candidates is not None
    assert [
        (c.index, c.content and c.content.parts and c.content.parts[0].text) for c in response.candidates
    ] == [
        (None, "Echo: Hi"),
        (1, "Echo: Hi"),
    ]
    assert fake.requests[-1].path == "/v1beta/models/gemini-2.0-flash:generateContent"


def test_sdk_generate_content_stream(fake: FakeGemini, client: genai.Client) -> None:
    fake.behave(chunks=3)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="one two three"))
    assert len(chunks) == 3
    assert "".join(chunk.text or "" for chunk in chunks) == "Echo: one two three"
    assert [c.candidates[0].finish_reason if c.candidates else None for c in chunks] == [
        None,
        None,
        types.FinishReason.STOP,
    ]
    final = chunks[-1].usage_metadata
    assert final is not None and (final.prompt_token_count, final.candidates_token_count) == (3, 4)
    assert fake.requests[-1].query == {"alt": "sse"}
    assert fake.completed_streams == 1


def test_sdk_function_calling_with_thought_signatures(fake: FakeGemini, client: genai.Client) -> None:
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    chat = client.chats.create(model="gemini-3-pro-preview", config=config)
    fake.script(Reply(function_calls=[("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})]))
    first = chat.send_message("Weather in Paris and Oslo?")
    assert [(c.name, c.args) for c in first.function_calls or []] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Oslo"}),
    ]
    parts = first.candidates[0].content.parts if first.candidates and first.candidates[0].content else None
    assert parts is not None and parts[0].thought_signature and parts[1].thought_signature is None
    second = chat.send_message(
        [
            types.Part.from_function_response(name="get_weather", response={"temp": 20}),
            types.Part.from_function_response(name="get_weather", response={"temp": 5}),
        ]
    )
    assert second.text == 'Results: get_weather: {"temp":20}; get_weather: {"temp":5}'


def test_sdk_history_without_the_thought_signature_is_rejected(client: genai.Client) -> None:
    history = [
        types.Content(role="user", parts=[types.Part.from_text(text="Weather?")]),
        types.Content(
            role="model", parts=[types.Part.from_function_call(name="get_weather", args={"city": "Oslo"})]
        ),
        types.Content(
            role="user", parts=[types.Part.from_function_response(name="get_weather", response={})]
        ),
    ]
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-3-pro-preview", contents=history)
    assert caught.value.code == 400
    assert "missing a thought_signature" in str(caught.value.message)
    assert "`default_api:get_weather`" in str(caught.value.message)
    response = client.models.generate_content(
        model="gemini-2.5-flash", contents=history
    )  # 2.5 does not check
    assert response.text == "Results: get_weather: {}"


def test_sdk_embed_content(fake: FakeGemini, client: genai.Client) -> None:
    response = client.models.embed_content(
        model="text-embedding-004",
        contents=["first text", "second"],
        config=types.EmbedContentConfig(output_dimensionality=8),
    )
    assert [e.values for e in response.embeddings or []] == [
        embedding_for("first text", 8),
        embedding_for("second", 8),
    ]
    (request,) = fake.requests_to("batchEmbedContents")
    assert request.json["requests"][0]["model"] == "models/text-embedding-004"


def test_sdk_count_tokens(client: genai.Client) -> None:
    assert client.models.count_tokens(model="gemini-2.5-flash", contents="one two three").total_tokens == 3


def test_sdk_sees_googles_invalid_key_error(fake: FakeGemini) -> None:
    with sdk(fake, api_key="AIzaSyWrongKey") as client, pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents="Hello")
    error = caught.value
    assert (error.code, error.status, error.message) == (
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
    )
    assert error.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


@pytest.mark.parametrize(
    ("behaviour", "error_type", "status"),
    [
        ({"status": 429, "retry_delay": "17s"}, errors.ClientError, "RESOURCE_EXHAUSTED"),
        ({"status": 503}, errors.ServerError, "UNAVAILABLE"),
        ({"status": 500}, errors.ServerError, "INTERNAL"),
    ],
)
def test_sdk_sees_injected_faults(
    fake: FakeGemini,
    client: genai.Client,
    behaviour: dict[str, Any],
    error_type: type[errors.APIError],
    status: str,
) -> None:
    fake.behave(**behaviour)
    with pytest.raises(error_type) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents="Hello")
    assert (caught.value.code, caught.value.status) == (behaviour["status"], status)


def test_sdk_unknown_model(client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-9-ultra", contents="Hello")
    assert caught.value.code == 404
    assert "models/gemini-9-ultra is not found for API version" in str(caught.value.message)


# --- the fake's strictness, over raw HTTP -----------------------------------------------------------

HELLO = {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**HELLO, "temprature": 1},
         'Invalid JSON payload received. Unknown name "temprature": Cannot find field.'),
        ({**HELLO, "generationConfig": {"max_tokens": 5}},
         "Invalid JSON payload received. Unknown name \"max_tokens\" at 'generation_config': Cannot find field."),
        ({**HELLO, "tools": [{"functionDeclarations": [{"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}}]}]},
         "Invalid JSON payload received. Unknown name \"additionalProperties\" at "
         "'tools[0].function_declarations[0].parameters': Cannot find field."),
        ({**HELLO, "generationConfig": {"temperature": "hot"}},
         "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\""),
        ({**HELLO, "toolConfig": {"functionCallingConfig": {"mode": "REQUIRED"}}},
         "Invalid value at 'tool_config.function_calling_config.mode' "
         '(type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), "REQUIRED"'),
        ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "not base64!"}}]}]},
         "Invalid value at 'contents[0].parts[0].inline_data.data' (TYPE_BYTES), Base64 decoding failed for "
         '"not base64!"'),
        ({}, "* GenerateContentRequest.contents: contents is not specified\n"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "Hi"}]}]}, "Please use a valid role: user, model."),
        ({"contents": [{"role": "user", "parts": []}]},
         "* GenerateContentRequest.contents[0].parts: contents.parts must not be empty.\n"),
        ({"contents": [{"role": "user", "parts": [{"text": ""}]}]},
         "* GenerateContentRequest.contents[0].parts[0].data: required oneof field 'data' must have one "
         "initialized field\n"),
        ({"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
         "Please ensure that function response turn comes immediately after a function call turn."),
        ({"contents": [{"role": "model", "parts": [{"functionCall": {"name": "f"}}]}]},
         "Please ensure that function call turn comes immediately after a user turn or after a function "
         "response turn."),
        ({"contents": [HELLO["contents"][0],
                       {"role": "model", "parts": [{"functionCall": {"name": "f"}}, {"functionCall": {"name": "g"}}]},
                       {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
         "Please ensure that the number of function response parts is equal to the number of function call "
         "parts of the function call turn."),
    ],
)  # fmt: skip
async def test_the_fake_rejects_what_google_rejects(
    fake: FakeGemini, http: aiohttp.ClientSession, body: dict[str, Any], message: str
) -> None:
    status, answer = await post(http, fake, "gemini-2.5-flash:generateContent", body)
    assert status == 400
    assert answer["error"]["status"] == "INVALID_ARGUMENT"
    assert answer["error"]["message"] == message


async def test_the_fake_takes_snake_case_names_and_the_key_as_a_query_parameter(fake: FakeGemini) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "generation_config": {"max_output_tokens": 5},
    }
    async with aiohttp.ClientSession() as session:
        url = f"{fake.base_url}/models/gemini-2.5-flash:generateContent"
        async with session.post(url, json=body, params={"key": DEFAULT_API_KEY}) as response:
            assert response.status == 200
        async with session.post(url, json=body) as response:
            assert response.status == 403
            assert (await response.json())["error"]["status"] == "PERMISSION_DENIED"


async def test_sse_is_framed_like_google_and_the_plain_stream_is_a_json_array(
    fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    url = f"{fake.base_url}/models/gemini-2.5-flash:streamGenerateContent"
    async with http.post(url, json=HELLO, params={"alt": "sse"}) as response:
        assert response.content_type == "text/event-stream"
        raw = await response.read()
    frames = raw.split(b"\r\n\r\n")
    assert frames[-1] == b"" and all(frame.startswith(b"data: {") for frame in frames[:-1])
    async with http.post(url, json=HELLO) as response:
        array = orjson.loads(await response.read())
    assert isinstance(array, list) and array[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_a_stream_that_dies_midway(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    fake.behave(die_after=1, chunks=4)
    url = f"{fake.base_url}/models/gemini-2.5-flash:streamGenerateContent"
    async with http.post(url, json=HELLO, params={"alt": "sse"}) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert fake.completed_streams == 0


async def test_a_fault_for_a_number_of_requests_only(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    fake.behave(status=503, times=1)
    assert (await post(http, fake, "gemini-2.5-flash:generateContent", HELLO))[0] == 503
    assert (await post(http, fake, "gemini-2.5-flash:generateContent", HELLO))[0] == 200


# --- the dialect against the fake -------------------------------------------------------------------

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


async def chat(
    http: aiohttp.ClientSession, fake: FakeGemini, body: dict[str, Any], model: str
) -> dict[str, Any]:
    status, answer = await post(http, fake, f"{model}:generateContent", encode_chat_request(body))
    assert status == 200, answer
    return decode_chat_response(answer, model=body["model"])


async def test_dialect_tool_round_trip_with_thought_signatures(
    fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
    ]
    body = {"model": "my-gemini", "messages": messages, "tools": [WEATHER_TOOL], "tool_choice": "auto"}
    fake.script(Reply(function_calls=[("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})]))
    first = await chat(http, fake, body, "gemini-3-pro-preview")
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert "__thought__" in message["tool_calls"][0]["id"]
    messages.append(message)
    for call, temp in zip(message["tool_calls"], (20, 5), strict=True):
        messages.append(
            {"role": "tool", "tool_call_id": call["id"], "content": orjson.dumps({"temp": temp}).decode()}
        )
    second = await chat(http, fake, body, "gemini-3-pro-preview")
    assert second["choices"][0]["message"]["content"] == (
        'Results: get_weather: {"temp":20}; get_weather: {"temp":5}'
    )
    # A client that loses the signature gets Google's 400 back, as a 400.
    message["tool_calls"] = [
        {**call, "id": call["id"].partition("__thought__")[0]} for call in message["tool_calls"]
    ]
    for result, call in zip(messages[-2:], message["tool_calls"], strict=True):
        result["tool_call_id"] = call["id"]
    status, answer = await post(http, fake, "gemini-3-pro-preview:generateContent", encode_chat_request(body))
    error = decode_error(status, orjson.dumps(answer), {})
    assert (error.status, error.code) == (400, "invalid_argument")
    assert "thought_signature" in error.message


async def test_dialect_bodies_pass_strict_validation(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    png = base64.b64encode(b"\x89PNG fake").decode()
    body = {
        "model": "my-gemini",
        "messages": [
            {"role": "developer", "content": "Answer in JSON."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            },
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "d", "schema": {"type": "object", "additionalProperties": False}},
        },
        "temperature": 0.5,
        "top_p": 0.9,
        "max_completion_tokens": 100,
        "stop": ["END"],
        "seed": 1,
        "n": 2,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.1,
        "logprobs": True,
        "top_logprobs": 2,
        "reasoning_effort": "low",
        "user": "u-1",
    }
    completion = await chat(http, fake, body, "gemini-2.5-flash")
    assert [c["index"] for c in completion["choices"]] == [0, 1]
    assert completion["choices"][0]["message"]["content"] == "Echo: Describe"
    assert completion["usage"]["prompt_tokens"] == 6  # "Describe" + "Answer in JSON." + 2 images


async def test_dialect_stream_through_the_sse_parser(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    fake.behave(chunks=2)
    fake.script(Reply(text="Sure thing", thought="Let me think about it", cached_tokens=1))
    body = {
        "model": "my-gemini",
        "messages": [{"role": "user", "content": "Tell me"}],
        "reasoning_effort": "high",
    }
    request = encode_chat_request(body)
    request["generationConfig"]["thinkingConfig"]["includeThoughts"] = True
    decoder = StreamDecoder(model="my-gemini", response_id="chatcmpl-x")
    parser, chunks = SSEParser(), []
    url = f"{fake.base_url}/models/gemini-2.5-flash:streamGenerateContent"
    async with http.post(url, json=request, params={"alt": "sse"}) as response:
        async for data in response.content.iter_any():
            for _, payload in parser.feed(data):
                chunks += decoder.feed(orjson.loads(payload))
    chunks += decoder.finish()
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "Sure "}, {"content": "thing"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 7,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 1},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }


async def test_dialect_stream_cut_cleanly_is_an_error(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    fake.behave(die_after=2, abrupt=False, chunks=4)
    decoder = StreamDecoder(model="m", response_id="chatcmpl-x")
    url = f"{fake.base_url}/models/gemini-2.5-flash:streamGenerateContent"
    parser = SSEParser()
    async with http.post(url, json=HELLO, params={"alt": "sse"}) as response:
        for _, payload in parser.feed(await response.read()):
            decoder.feed(orjson.loads(payload))
    with pytest.raises(GatewayError, match="ended before the answer was complete") as caught:
        decoder.finish()
    assert caught.value.status == 502
    assert decoder.usage is not None and decoder.usage.prompt_tokens == 1


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
async def test_dialect_embeddings(
    fake: FakeGemini, http: aiohttp.ClientSession, encoding_format: str
) -> None:
    body = {
        "model": "emb",
        "input": ["hello world", "bye"],
        "dimensions": 4,
        "encoding_format": encoding_format,
    }
    request = encode_embeddings_request(body, model="gemini-embedding-001")
    status, answer = await post(http, fake, "gemini-embedding-001:batchEmbedContents", request)
    assert status == 200
    decoded = decode_embeddings_response(
        answer, model="emb", encoding_format=encoding_format, prompt_tokens=3
    )
    vectors = [item["embedding"] for item in decoded["data"]]
    if encoding_format == "base64":
        vectors = [list(struct.unpack("<4f", base64.b64decode(v))) for v in vectors]
    assert vectors == [embedding_for("hello world", 4), embedding_for("bye", 4)]
    assert decoded["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


@pytest.mark.parametrize(
    ("behaviour", "target", "key", "expected"),
    [
        ({}, "gemini-2.5-flash:generateContent", "AIzaSyWrongKey", (502, "upstream_auth_error", None)),
        ({}, "gemini-2.5-flash:generateContent", "", (502, "upstream_auth_error", None)),
        ({}, "gemini-9:generateContent", DEFAULT_API_KEY, (502, "upstream_model_not_found", None)),
        ({"status": 429, "retry_delay": "17s"}, "gemini-2.5-flash:generateContent", DEFAULT_API_KEY,
         (429, "rate_limit_exceeded", "17")),
        ({"status": 503}, "gemini-2.5-flash:generateContent", DEFAULT_API_KEY, (503, "upstream_unavailable", None)),
        ({"status": 504}, "gemini-2.5-flash:generateContent", DEFAULT_API_KEY, (504, "upstream_timeout", None)),
    ],
)  # fmt: skip
async def test_dialect_decodes_the_fakes_errors(
    fake: FakeGemini, behaviour: dict[str, Any], target: str, key: str, expected: tuple[int, str, str | None]
) -> None:
    fake.behave(**behaviour)
    headers = {"x-goog-api-key": key} if key else {}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.post(f"{fake.base_url}/models/{target}", json=HELLO) as response,
    ):
        error = decode_error(response.status, await response.read(), response.headers)
    assert (error.status, error.code, error.headers.get("retry-after")) == expected
