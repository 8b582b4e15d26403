"""The OpenAI-compatible API end to end: the official ``openai`` SDK against the gateway (hypercorn on
127.0.0.1) in front of a fake OpenAI upstream and the built-in mock provider."""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI
from tests.fakes.openai_upstream import embedding_for, split_reply

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello gateway"}]


# --- chat, not streamed ---------------------------------------------------------------------------------


def test_chat_answer_comes_from_the_upstream(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-fake")
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Echo: Hello gateway"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)
    assert raw.headers["x-request-id"]
    assert raw.headers["x-upstream-request-id"].startswith("req-fake")
    (forwarded,) = fake.requests_to("/v1/chat/completions")
    assert forwarded.headers["authorization"] == f"Bearer {fake.api_key}"
    assert forwarded.json == {"model": "gpt-4o-mini", "messages": HELLO}


async def test_chat_with_the_async_client(async_client: openai.AsyncOpenAI, fake: FakeOpenAI) -> None:
    completion = await async_client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)

    assert completion.choices[0].message.content == "Echo: Hello gateway"
    assert len(fake.requests_to("/v1/chat/completions")) == 1


# --- chat, streamed ---------------------------------------------------------------------------------------


def test_stream_chunks_arrive_in_order_and_reassemble(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    reply = "one two three four five six seven eight nine ten"
    fake.behave(reply=reply, chunks=8)

    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))

    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [chunk.choices[0].delta.content for chunk in chunks[1:-1]]
    assert pieces == split_reply(reply, 8)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({chunk.id for chunk in chunks}) == 1


def test_stream_without_include_usage_hides_the_usage_chunk_the_gateway_asked_for(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))

    assert all(chunk.choices for chunk in chunks), (
        "a chunk without choices (the usage chunk) reached the client"
    )
    assert all(chunk.usage is None for chunk in chunks)
    (forwarded,) = fake.requests_to("/v1/chat/completions")
    assert forwarded.json["stream_options"] == {"include_usage": True}
    assert fake.completed_streams == 1


def test_stream_with_include_usage_ends_with_the_usage_chunk(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    *content, last = chunks
    assert all(chunk.usage is None and chunk.choices for chunk in content)
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (2, 3, 5)
    (forwarded,) = fake.requests_to("/v1/chat/completions")
    assert forwarded.json["stream_options"] == {"include_usage": True}


async def test_stream_with_the_async_client(async_client: openai.AsyncOpenAI, fake: FakeOpenAI) -> None:
    stream = await async_client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Echo: Hello gateway"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 5


@pytest.mark.parametrize("model", ["gpt-4o-mini", "mock-echo"])
async def test_stream_is_framed_as_server_sent_events(
    gateway: GatewayServer, fake: FakeOpenAI, model: str
) -> None:
    body = {"model": model, "messages": HELLO, "stream": True}
    headers = {"Authorization": f"Bearer {gateway.api_key}"}
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        raw = await response.aread()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"]
    assert raw.endswith(b"data: [DONE]\n\n")
    events = raw.split(b"\n\n")
    assert events[-1] == b""
    events = events[:-1]
    assert all(event.startswith(b"data: ") and b"\n" not in event for event in events)
    assert events.count(b"data: [DONE]") == 1
    payloads = [orjson.loads(event[6:]) for event in events[:-1]]
    assert [p["object"] for p in payloads] == ["chat.completion.chunk"] * len(payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


# --- same-dialect fast path -------------------------------------------------------------------------------


async def test_the_upstream_receives_the_clients_exact_bytes(
    gateway: GatewayServer, fake: FakeOpenAI
) -> None:
    # Odd spacing, key order, escapes and non-ASCII: any re-encoding would change these bytes.
    raw = (
        b'{ "messages" : [ {"role":"user", "content":"caf\\u00e9 \xe2\x98\x95  \\n end"} ],\n'
        b'  "model":"gpt-4o-mini", "temperature": 0.250, "logit_bias": {"50256": -100},'
        b' "metadata": {"trace": "abc"}, "seed": 7 }'
    )
    headers = {"Authorization": f"Bearer {gateway.api_key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        response = await http.post("/v1/chat/completions", content=raw, headers=headers)

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Echo: café ☕  \n end"
    (forwarded,) = fake.requests_to("/v1/chat/completions")
    assert forwarded.body == raw


def test_unknown_parameters_reach_the_upstream_untouched(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.behave(allow_unknown_parameters=True)

    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        metadata={"customer": "c-42"},
        logit_bias={"1734": -100},
        extra_body={"foo_extra": {"a": 1}, "vendor_flag": [1, "two", None]},
    )

    (forwarded,) = fake.requests_to("/v1/chat/completions")
    assert forwarded.json["foo_extra"] == {"a": 1}
    assert forwarded.json["vendor_flag"] == [1, "two", None]
    assert forwarded.json["metadata"] == {"customer": "c-42"}
    assert forwarded.json["logit_bias"] == {"1734": -100}


def test_only_the_model_name_is_rewritten_for_a_renamed_deployment(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    completion = client.chat.completions.create(
        model="my-gpt",
        messages=HELLO,
        temperature=0.5,
        metadata={"k": "v"},
        logit_bias={"50256": -100},
        user="u-1",
    )

    assert completion.choices[0].message.content == "Echo: Hello gateway"
    (forwarded,) = fake.requests_to("/v1/chat/completions")
    assert forwarded.json == {
        "model": "gpt-4o-mini",
        "messages": HELLO,
        "temperature": 0.5,
        "metadata": {"k": "v"},
        "logit_bias": {"50256": -100},
        "user": "u-1",
    }


def test_a_stream_gets_only_the_usage_option_added(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    list(client.chat.completions.create(model="my-gpt", messages=HELLO, stream=True, temperature=0.1))

    (forwarded,) = fake.requests_to("/v1/chat/completions")
    assert forwarded.json == {
        "model": "gpt-4o-mini",
        "messages": HELLO,
        "stream": True,
        "temperature": 0.1,
        "stream_options": {"include_usage": True},
    }


# --- models -----------------------------------------------------------------------------------------------


def test_models_lists_what_the_key_may_use(
    client: openai.OpenAI, gateway: GatewayServer, mock_only_key: str
) -> None:
    everything = {model.id for model in client.models.list()}
    assert {
        "gpt-4o-mini",
        "my-gpt",
        "mock-echo",
        "mock",
        "mock-embedding",
        "text-embedding-3-small",
    } <= everything

    limited = client.with_options(api_key=mock_only_key)  # shares the client's connection pool
    visible = {model.id for model in limited.models.list()}
    assert visible == {"mock-echo", "mock-embedding", "mock"}


def test_retrieve_a_model(client: openai.OpenAI) -> None:
    model = client.models.retrieve("my-gpt")

    assert model.id == "my-gpt"
    assert model.object == "model"
    assert model.owned_by == "lockgate"
    assert isinstance(model.created, int)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "no-such-model"])
def test_retrieve_a_model_the_key_may_not_use_is_not_found(
    client: openai.OpenAI, mock_only_key: str, model: str
) -> None:
    limited = client.with_options(api_key=mock_only_key)
    with pytest.raises(openai.NotFoundError) as caught:
        limited.models.retrieve(model)

    assert caught.value.code == "model_not_found"
    assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}
    assert caught.value.response.headers["x-request-id"]
    assert limited.models.retrieve("mock-echo").id == "mock-echo"


# --- embeddings -------------------------------------------------------------------------------------------


def test_float_embeddings_from_the_upstream(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    result = client.embeddings.create(
        model="text-embedding-3-small", input=["first text", "second"], dimensions=8, encoding_format="float"
    )

    assert [item.index for item in result.data] == [0, 1]
    assert result.data[0].embedding == embedding_for("first text", 8)
    assert result.data[1].embedding == embedding_for("second", 8)
    assert result.usage.prompt_tokens == 3
    (forwarded,) = fake.requests_to("/v1/embeddings")
    assert forwarded.json["encoding_format"] == "float"


def test_base64_embeddings_are_decoded_by_the_sdk(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input="some text", dimensions=16)

    (forwarded,) = fake.requests_to("/v1/embeddings")
    assert forwarded.json["encoding_format"] == "base64"  # the SDK's default
    assert result.data[0].embedding == embedding_for("some text", 16)


async def test_base64_embeddings_on_the_wire(gateway: GatewayServer, fake: FakeOpenAI) -> None:
    body = {"model": "text-embedding-3-small", "input": "wire", "dimensions": 4, "encoding_format": "base64"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        response = await http.post("/v1/embeddings", json=body, headers={"X-API-Key": gateway.api_key})

    assert response.status_code == 200
    encoded = response.json()["data"][0]["embedding"]
    assert list(struct.unpack("<4f", base64.b64decode(encoded))) == embedding_for("wire", 4)


async def test_mock_embeddings_float_and_base64_agree(async_client: openai.AsyncOpenAI) -> None:
    as_float = await async_client.embeddings.create(
        model="mock-embedding", input="alpha", encoding_format="float"
    )
    as_base64 = await async_client.embeddings.create(model="mock-embedding", input="alpha")
    other = await async_client.embeddings.create(model="mock-embedding", input="beta")

    vector = as_float.data[0].embedding
    assert len(vector) == 8
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-5
    assert as_base64.data[0].embedding == vector
    assert other.data[0].embedding != vector


# --- the mock provider ------------------------------------------------------------------------------------


def test_mock_echoes_the_last_user_message_deterministically(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "what is the capital of France"},
    ]
    first = client.chat.completions.create(model="mock", messages=messages)
    second = client.chat.completions.create(model="mock-echo", messages=messages)

    assert first.choices[0].message.content == "what is the capital of France"
    assert second.choices[0].message.content == first.choices[0].message.content
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None
    assert first.usage.completion_tokens == 6


def test_mock_streams_the_configured_number_of_chunks(client: openai.OpenAI) -> None:
    text = "a deterministic answer split into a fixed number of streamed pieces"
    stream = client.chat.completions.create(
        model="mock-echo",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 5  # options: {chunks: 5}
    assert "".join(content) == text
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text.split())


@pytest.mark.parametrize("stream", [False, True])
def test_mock_max_tokens_cuts_the_answer_with_finish_reason_length(
    client: openai.OpenAI, stream: bool
) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "one two three four five six"}]
    if stream:
        chunks = list(
            client.chat.completions.create(model="mock", messages=messages, max_tokens=3, stream=True)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        completion = client.chat.completions.create(model="mock", messages=messages, max_tokens=3)
        text, finish = completion.choices[0].message.content or "", completion.choices[0].finish_reason

    assert text == "one two three"
    assert finish == "length"
