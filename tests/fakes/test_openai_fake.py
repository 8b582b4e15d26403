"""The fake OpenAI upstream, driven directly by the official ``openai`` SDK: its shapes are the real API's,
so what the gateway tests prove against it holds against api.openai.com."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from tests.chat_completions import function_calls
from tests.fakes import FakeOpenAI
from tests.fakes.openai_upstream import embedding_for, split_reply

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def direct(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0, timeout=10) as sdk:
        yield sdk


def test_chat_completion(direct: openai.OpenAI, fake: FakeOpenAI) -> None:
    completion = direct.chat.completions.create(model="gpt-4o-mini", messages=HELLO)

    assert completion.choices[0].message.content == "Echo: Hello"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 3
    (recorded,) = fake.requests_to("/v1/chat/completions")
    assert recorded.json == {"model": "gpt-4o-mini", "messages": HELLO}
    assert recorded.headers["authorization"] == f"Bearer {fake.api_key}"


def test_stream_shapes(direct: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.behave(reply="abcdefgh", chunks=3)
    plain = list(direct.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    with_usage = list(
        direct.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert plain[0].choices[0].delta.role == "assistant"
    assert (
        [c.choices[0].delta.content for c in plain[1:-1]]
        == split_reply("abcdefgh", 3)
        == ["abc", "def", "gh"]
    )
    assert plain[-1].choices[0].finish_reason == "stop"
    assert len(with_usage) == len(plain) + 1
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage is not None
    assert fake.completed_streams == 2


def test_stream_framing_with_include_usage(fake: FakeOpenAI) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    response = httpx.post(f"{fake.base_url}/chat/completions", json=body, headers=headers, timeout=10)

    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.content.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert all(b'"usage":null' in event for event in events[:-3])
    assert b'"choices":[],' in events[-3]


@pytest.mark.parametrize(
    ("body", "status", "exception", "code"),
    [
        ({"model": "gpt-4o-mini"}, 400, openai.BadRequestError, "missing_required_parameter"),
        ({"messages": HELLO}, 400, openai.BadRequestError, None),
        (
            {"model": "gpt-4o-mini", "messages": HELLO, "stream_options": {}},
            400,
            openai.BadRequestError,
            None,
        ),
        ({"model": "gpt-4o-mini", "messages": HELLO, "foo_extra": 1}, 400, openai.BadRequestError, None),
        ({"model": "gpt-5-imaginary", "messages": HELLO}, 404, openai.NotFoundError, "model_not_found"),
    ],
    ids=["missing-messages", "missing-model", "stream-options-alone", "unknown-parameter", "unknown-model"],
)
def test_validation(
    direct: openai.OpenAI, body: object, status: int, exception: type[openai.APIStatusError], code: str | None
) -> None:
    with pytest.raises(exception) as caught:
        direct.post("/chat/completions", body=body, cast_to=ChatCompletion)

    assert caught.value.status_code == status
    assert caught.value.code == code
    assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}


def test_malformed_json_is_400(direct: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        direct.post(
            "/chat/completions",
            content=b"{not json",
            cast_to=ChatCompletion,
            options={"headers": {"Content-Type": "application/json"}},
        )
    assert "could not parse the JSON body" in caught.value.message


def test_bad_key_is_401(fake: FakeOpenAI) -> None:
    with (
        openai.OpenAI(base_url=fake.base_url, api_key="sk-not-the-key-12345678", max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        sdk.models.list()
    assert caught.value.code == "invalid_api_key"
    assert "sk-not-the-key-12345678" not in caught.value.message  # redacted, like the real API
    assert "5678" in caught.value.message


def test_injected_fault_with_headers(direct: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.behave(
        status=429,
        message="Slow down",
        type="requests",
        code="rate_limit_exceeded",
        headers={"retry-after": "3"},
    )
    with pytest.raises(openai.RateLimitError) as caught:
        direct.chat.completions.create(model="gpt-4o-mini", messages=HELLO)

    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.code == "rate_limit_exceeded"


def test_a_dying_stream_never_sends_done(fake: FakeOpenAI) -> None:
    fake.behave(die_after=2, abrupt=False)
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    response = httpx.post(
        f"{fake.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {fake.api_key}"},
        timeout=10,
    )

    assert response.content.count(b"data: ") == 2
    assert b"[DONE]" not in response.content


def test_embeddings_and_models(direct: openai.OpenAI) -> None:
    as_base64 = direct.embeddings.create(model="text-embedding-3-small", input=["a", "b"], dimensions=4)
    as_float = direct.embeddings.create(
        model="text-embedding-3-small", input="a", dimensions=4, encoding_format="float"
    )

    assert [d.embedding for d in as_base64.data] == [embedding_for("a", 4), embedding_for("b", 4)]
    assert as_float.data[0].embedding == embedding_for("a", 4)
    assert "gpt-4o-mini" in {model.id for model in direct.models.list()}
    assert direct.models.retrieve("gpt-4o").owned_by == "system"
    with pytest.raises(openai.NotFoundError):
        direct.models.retrieve("gpt-0")


def test_tool_calls_answer(direct: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.behave(tool_calls=[("send_mail", '{"to": "a@b.c"}'), ("get_time", "{}")], chunks=4)
    completion = direct.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    chunks = list(direct.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = function_calls(choice.message)
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("send_mail", '{"to": "a@b.c"}'),
        ("get_time", "{}"),
    ]
    assert all(c.id.startswith("call_") for c in calls)
    deltas = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    opened = [d for d in deltas if d.id is not None]
    assert [(d.index, d.function and d.function.name) for d in opened] == [(0, "send_mail"), (1, "get_time")]
    arguments = [
        "".join(d.function.arguments or "" for d in deltas if d.index == i and d.function) for i in (0, 1)
    ]
    assert arguments == ['{"to": "a@b.c"}', "{}"]
    assert len([d for d in deltas if d.index == 0]) == 5  # the opening, then 4 pieces
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
