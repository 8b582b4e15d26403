"""DLP end to end with the ``openai`` SDK as the client, in front of every upstream dialect.

What each upstream received is read from its fake's recording: the raw values are gone and the
placeholders are there, for every place a chat request carries text (system prompt, user message as a
string and as content parts, assistant tool-call arguments, tool results) and for embeddings. Blocked
requests and failing filters never reach an upstream; pseudonyms come back in answers, streamed one
character per chunk included; values the upstream writes itself are redacted in the answer; ``log``
changes no byte; overrides per model group, organization and key apply. The setting is described in
:mod:`tests.dlp_end_to_end`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer
from tests.chat_completions import function_calls, user
from tests.dlp_end_to_end import (
    ACME_KEY,
    ACME_PSEUDO_KEY,
    ANSWER,
    ARGUMENT_VALUE,
    CONVERSATION_FINDINGS,
    DELIVERIES,
    KEY_VALUE,
    LAST_VALUE,
    MODEL_VALUE,
    ONE_CHAR,
    PART_VALUE,
    RELAXED_KEY,
    RESULT_VALUE,
    SYSTEM_VALUE,
    UPSTREAMS,
    Answer,
    FindingsRecorder,
    Upstream,
    assert_no_raw_value,
    check_logs,
    failing_config,
    findings,
    main_config,
    reset,
    serve_gateway,
    serve_upstreams,
    without_ids,
)

SEND_MAIL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "send_mail",
        "parameters": {"type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]},
    },
}
LOOKUP_KEY: ChatCompletionToolParam = {
    "type": "function",
    "function": {"name": "lookup_key", "parameters": {"type": "object", "properties": {}}},
}


def conversation() -> list[ChatCompletionMessageParam]:
    """A value in each place of a chat request: see :data:`tests.dlp_end_to_end.RAW_VALUES`."""
    return [
        {"role": "system", "content": f"You assist {SYSTEM_VALUE}."},
        {"role": "user", "content": [{"type": "text", "text": f"Mail {PART_VALUE} the report."}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "send_mail", "arguments": json.dumps({"to": ARGUMENT_VALUE})},
                },
                {"id": "call_2", "type": "function", "function": {"name": "lookup_key", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": f"Sent, and copied to {RESULT_VALUE}."},
        {
            "role": "tool",
            "tool_call_id": "call_2",
            "content": [{"type": "text", "text": f"The key: {KEY_VALUE}"}],
        },
        {"role": "user", "content": f"Now tell {LAST_VALUE}."},
    ]


def ask(
    client: openai.OpenAI,
    model: str,
    messages: list[ChatCompletionMessageParam],
    stream: bool,
    *,
    received: list[str] | None = None,
    **extra: Any,
) -> Answer:
    """The client's answer; a stream's text pieces also go to ``received`` as they come."""
    if not stream:
        message = client.chat.completions.create(model=model, messages=messages, **extra).choices[0].message
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in function_calls(message)]
        return Answer(message.content or "", calls)
    texts: list[str] = [] if received is None else received
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    pieces = 0
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True, **extra):
        for choice in chunk.choices:
            if choice.delta.content:
                texts.append(choice.delta.content)
                pieces += 1
            for call in choice.delta.tool_calls or []:
                if call.function is not None and call.function.name:
                    names[call.index] = call.function.name
                if call.function is not None and call.function.arguments:
                    arguments[call.index] = arguments.get(call.index, "") + call.function.arguments
                    pieces += 1
    calls = [(names[i], json.loads(arguments.get(i) or "{}")) for i in sorted(names)]
    return Answer("".join(texts), calls, pieces)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    with serve_upstreams() as fakes:
        yield fakes


@pytest.fixture(scope="module")
def recorder() -> FindingsRecorder:
    return FindingsRecorder()


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, Upstream], recorder: FindingsRecorder) -> Iterator[GatewayServer]:
    with serve_gateway(main_config(upstreams), recorder) as server:
        yield server


@pytest.fixture(scope="module")
def failing_gateway(upstreams: dict[str, Upstream], recorder: FindingsRecorder) -> Iterator[GatewayServer]:
    with serve_gateway(failing_config(upstreams), recorder) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(upstreams: dict[str, Upstream], recorder: FindingsRecorder) -> None:
    reset(upstreams)
    recorder.clear()


@pytest.fixture(autouse=True)
def no_raw_value_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield from check_logs(caplog)


def sdk(server: GatewayServer, key: str = DEFAULT_TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=10)


@pytest.fixture(scope="module")
def client(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with sdk(gateway) as client:
        yield client


STREAM = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
EVERY_UPSTREAM = pytest.mark.parametrize("name", UPSTREAMS)
NATIVE_UPSTREAMS = pytest.mark.parametrize("name", ["openai", "anthropic"])


# --- 1. no raw value reaches an upstream -----------------------------------------------------------------


@EVERY_UPSTREAM
@STREAM
def test_no_raw_value_reaches_the_upstream(
    client: openai.OpenAI, upstreams: dict[str, Upstream], recorder: FindingsRecorder, name: str, stream: bool
) -> None:
    upstream = upstreams[name]
    answer = ask(client, f"{name}-redact", conversation(), stream, tools=[SEND_MAIL, LOOKUP_KEY])

    body = upstream.body()
    assert_no_raw_value(body)
    assert body.count(b"[EMAIL_ADDRESS]") == CONVERSATION_FINDINGS["EMAIL_ADDRESS"]
    assert body.count(b"[AWS_ACCESS_KEY]") == CONVERSATION_FINDINGS["AWS_ACCESS_KEY"]
    assert "[EMAIL_ADDRESS]" in answer.text  # the fake's echo of what it got
    assert recorder.last() == findings(CONVERSATION_FINDINGS, "request", "redact")


@pytest.mark.parametrize("name", ["openai", "azure"])
def test_no_raw_value_reaches_the_embeddings_upstream(
    client: openai.OpenAI, upstreams: dict[str, Upstream], recorder: FindingsRecorder, name: str
) -> None:
    upstream = upstreams[name]
    client.embeddings.create(model=f"{name}-embed-redact", input=[f"Mail {PART_VALUE}", f"Key {KEY_VALUE}"])
    client.embeddings.create(model=f"{name}-embed-redact", input=f"Mail {LAST_VALUE}")

    first, second = upstream.bodies()
    assert json.loads(first)["input"] == ["Mail [EMAIL_ADDRESS]", "Key [AWS_ACCESS_KEY]"]
    assert json.loads(second)["input"] == "Mail [EMAIL_ADDRESS]"
    assert recorder.settled() == [
        {("EMAIL_ADDRESS", "request", "redact"): 1, ("AWS_ACCESS_KEY", "request", "redact"): 1},
        {("EMAIL_ADDRESS", "request", "redact"): 1},
    ]


# --- 2. block --------------------------------------------------------------------------------------------


@EVERY_UPSTREAM
@STREAM
def test_a_blocked_request_reaches_no_upstream(
    client: openai.OpenAI, upstreams: dict[str, Upstream], recorder: FindingsRecorder, name: str, stream: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, f"{name}-block", conversation(), stream, tools=[SEND_MAIL, LOOKUP_KEY])

    error = caught.value
    assert error.status_code == 400 and error.code == "dlp_blocked"
    assert "it contains AWS_ACCESS_KEY, EMAIL_ADDRESS" in error.message
    assert_no_raw_value(error.response.text)
    assert upstreams[name].bodies() == []
    assert recorder.last() == findings(CONVERSATION_FINDINGS, "request", "block")


@pytest.mark.parametrize("name", ["openai", "azure"])
def test_a_blocked_embeddings_request_reaches_no_upstream(
    client: openai.OpenAI, upstreams: dict[str, Upstream], name: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=f"{name}-embed-block", input=["fine", f"Key {KEY_VALUE}"])

    assert caught.value.code == "dlp_blocked"
    assert "it contains AWS_ACCESS_KEY." in caught.value.message
    assert upstreams[name].bodies() == []


# --- 3. pseudonyms ---------------------------------------------------------------------------------------


@EVERY_UPSTREAM
@STREAM
def test_pseudonyms_are_restored_in_the_answer(
    client: openai.OpenAI, upstreams: dict[str, Upstream], recorder: FindingsRecorder, name: str, stream: bool
) -> None:
    upstream = upstreams[name]
    upstream.stream_in(ONE_CHAR)  # placeholders reach the gateway split across chunks
    message = f"Mail {PART_VALUE} and {RESULT_VALUE} the key {KEY_VALUE}."

    answer = ask(client, f"{name}-pseudo", user(message), stream)

    body = upstream.body()
    assert_no_raw_value(body)
    assert b"Mail [EMAIL_ADDRESS_1] and [EMAIL_ADDRESS_2] the key [AWS_ACCESS_KEY_1]." in body
    assert answer.text == f"Echo: {message}"
    if stream:
        assert answer.pieces > 20  # the text outside placeholders still came one character at a time
    assert recorder.last() == {
        ("EMAIL_ADDRESS", "request", "pseudonymize"): 2,
        ("AWS_ACCESS_KEY", "request", "pseudonymize"): 1,
    }


@pytest.mark.parametrize("name", ["openai", "anthropic", "gemini"])
@STREAM
def test_pseudonyms_are_restored_in_tool_call_arguments(
    client: openai.OpenAI, upstreams: dict[str, Upstream], name: str, stream: bool
) -> None:
    upstream = upstreams[name]
    upstream.call_tool("send_mail", {"to": "[EMAIL_ADDRESS_1]", "subject": "For [EMAIL_ADDRESS_1]"}, ONE_CHAR)

    answer = ask(client, f"{name}-pseudo", user(f"Mail {PART_VALUE}."), stream, tools=[SEND_MAIL])

    assert_no_raw_value(upstream.body())
    assert answer.calls == [("send_mail", {"to": PART_VALUE, "subject": f"For {PART_VALUE}"})]


# --- 4. values in answers --------------------------------------------------------------------------------


@EVERY_UPSTREAM
@pytest.mark.parametrize("delivery", DELIVERIES)
def test_a_value_in_the_answer_is_redacted(
    client: openai.OpenAI,
    upstreams: dict[str, Upstream],
    recorder: FindingsRecorder,
    name: str,
    delivery: str,
) -> None:
    text, chunks, stream = DELIVERIES[delivery]
    upstream = upstreams[name]
    upstream.answer(text, chunks)

    answer = ask(client, f"{name}-answers", user(f"Who? The key is {KEY_VALUE}."), stream)

    assert answer.text == text.replace(PART_VALUE, "[EMAIL_ADDRESS]")
    assert KEY_VALUE.encode() in upstream.body()  # direction: response leaves requests as they are
    assert recorder.last() == {("EMAIL_ADDRESS", "response", "redact"): 1}


@EVERY_UPSTREAM
@pytest.mark.parametrize("delivery", ["whole", "one-char-chunks"])
def test_a_value_the_upstream_writes_keeps_its_pseudonym(
    client: openai.OpenAI,
    upstreams: dict[str, Upstream],
    recorder: FindingsRecorder,
    name: str,
    delivery: str,
) -> None:
    _, chunks, stream = DELIVERIES[delivery]
    upstreams[name].answer(f"Write to {MODEL_VALUE}, not [EMAIL_ADDRESS_1].", chunks)

    answer = ask(client, f"{name}-pseudo-both", user(f"Mail {PART_VALUE}."), stream)

    # Only the value the client sent comes back; the one the upstream wrote keeps its placeholder.
    assert answer.text == f"Write to [EMAIL_ADDRESS_2], not {PART_VALUE}."
    assert recorder.last() == {
        ("EMAIL_ADDRESS", "request", "pseudonymize"): 1,
        ("EMAIL_ADDRESS", "response", "pseudonymize"): 1,
    }


@NATIVE_UPSTREAMS
@STREAM
def test_a_value_to_block_in_the_answer_never_reaches_the_client(
    client: openai.OpenAI, upstreams: dict[str, Upstream], name: str, stream: bool
) -> None:
    upstreams[name].answer(ANSWER, ONE_CHAR)
    received: list[str] = []

    with pytest.raises(openai.APIError) as caught:  # a stream: an error event where the value was
        ask(client, f"{name}-answers-block", user("Who?"), stream, received=received)

    assert caught.value.message.endswith(
        "The answer was blocked by the data-loss prevention policy: it contains EMAIL_ADDRESS."
    )
    assert "".join(received) == ("Write to " if stream else "")


# --- 5. log ----------------------------------------------------------------------------------------------


def post(server: GatewayServer, key: str, body: dict[str, Any]) -> bytes:
    headers = {"authorization": f"Bearer {key}"}
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{server.base_url}/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        return response.read()


@EVERY_UPSTREAM
@STREAM
def test_log_changes_no_byte(
    gateway: GatewayServer,
    upstreams: dict[str, Upstream],
    recorder: FindingsRecorder,
    name: str,
    stream: bool,
) -> None:
    upstream = upstreams[name]
    upstream.stream_in(5)
    request = {"model": f"{name}-log", "messages": user(f"Mail {PART_VALUE}."), "stream": stream}

    logged = post(gateway, DEFAULT_TEST_KEY, request)
    counts = recorder.last()
    recorder.clear()
    plain = post(gateway, RELAXED_KEY, request)  # the organization "relaxed" turns DLP off

    assert without_ids(logged) == without_ids(plain)
    assert stream or PART_VALUE.encode() in logged  # (a stream splits it across chunks)
    with_dlp, without_dlp = upstream.bodies()
    assert with_dlp == without_dlp
    assert PART_VALUE.encode() in with_dlp
    assert counts == {("EMAIL_ADDRESS", "request", "log"): 1, ("EMAIL_ADDRESS", "response", "log"): 1}
    assert recorder.last() is None


# --- 6. failing filters ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing_client(failing_gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with sdk(failing_gateway) as client:
        yield client


@NATIVE_UPSTREAMS
@pytest.mark.parametrize("failure", ["crash", "thread-timeout", "async-timeout"])
@STREAM
def test_a_failing_filter_refuses_the_request(
    failing_client: openai.OpenAI, upstreams: dict[str, Upstream], name: str, failure: str, stream: bool
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        ask(failing_client, f"{name}-{failure}", user(f"Mail {PART_VALUE}."), stream)

    assert caught.value.status_code == 503 and caught.value.code == "dlp_unavailable"
    assert upstreams[name].bodies() == []


@NATIVE_UPSTREAMS
@STREAM
def test_a_filter_failing_on_the_answer_ends_it_with_an_error(
    failing_client: openai.OpenAI, name: str, stream: bool
) -> None:
    with pytest.raises(openai.APIError) as caught:  # a stream: an error event, not a broken connection
        ask(failing_client, f"{name}-crash-on-answers", user("Hello"), stream)

    assert "data-loss prevention filters could not check" in caught.value.message
    if not stream:
        assert isinstance(caught.value, openai.InternalServerError) and caught.value.code == "dlp_unavailable"


@NATIVE_UPSTREAMS
def test_a_failing_filter_lets_the_request_pass_when_allowed(
    failing_client: openai.OpenAI,
    upstreams: dict[str, Upstream],
    recorder: FindingsRecorder,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    request_ids = []
    for _ in range(3):
        raw = failing_client.chat.completions.with_raw_response.create(
            model=f"{name}-crash-allow", messages=user("Mail nobody.")
        )
        assert raw.parse().choices[0].message.content == "Echo: Mail nobody."
        request_ids.append(raw.headers["x-request-id"])

    assert len(upstreams[name].bodies()) == 3
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "lockgate.dlp" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 3
    for request_id, warning in zip(request_ids, warnings, strict=True):
        assert warning.startswith(f"request {request_id}: DLP filter crashing failed: RuntimeError")
    assert recorder.settled() == [{("error", "request", "allow"): 1}] * 3


# --- 7. overrides per model group, organization and key ------------------------------------------------


def test_a_model_group_blocks_what_the_gateway_redacts(
    client: openai.OpenAI, upstreams: dict[str, Upstream]
) -> None:
    message = user(f"Mail {PART_VALUE}.")

    assert ask(client, "openai-redact", message, False).text == "Echo: Mail [EMAIL_ADDRESS]."
    with pytest.raises(openai.BadRequestError, match="it contains EMAIL_ADDRESS"):
        ask(client, "openai-block", message, False)
    assert len(upstreams["openai"].bodies()) == 1


def test_an_organization_blocks_one_type(gateway: GatewayServer, upstreams: dict[str, Upstream]) -> None:
    with sdk(gateway, ACME_KEY) as acme, sdk(gateway) as other:
        assert (
            ask(acme, "openai-redact", user(f"Mail {PART_VALUE}."), False).text
            == "Echo: Mail [EMAIL_ADDRESS]."
        )
        with pytest.raises(openai.BadRequestError) as caught:
            ask(acme, "openai-redact", user(f"Mail {PART_VALUE} the key {KEY_VALUE}."), False)
        assert (
            ask(other, "openai-redact", user(f"Key {KEY_VALUE}."), False).text
            == "Echo: Key [AWS_ACCESS_KEY]."
        )

    assert caught.value.code == "dlp_blocked"
    assert caught.value.message.endswith("it contains AWS_ACCESS_KEY.")  # e-mail addresses are still redacted
    assert len(upstreams["openai"].bodies()) == 2


def test_a_key_overrides_its_organization(gateway: GatewayServer, upstreams: dict[str, Upstream]) -> None:
    message = f"Key {KEY_VALUE} for {PART_VALUE}."
    with sdk(gateway, ACME_PSEUDO_KEY) as key:
        answer = ask(key, "openai-redact", user(message), False)  # acme blocks AWS keys, this key does not

    assert upstreams["openai"].body().endswith(b'"Key [AWS_ACCESS_KEY_1] for [EMAIL_ADDRESS]."}]}')
    assert answer.text == f"Echo: Key {KEY_VALUE} for [EMAIL_ADDRESS]."


def test_an_organization_turns_dlp_off(
    gateway: GatewayServer, upstreams: dict[str, Upstream], recorder: FindingsRecorder
) -> None:
    with sdk(gateway, RELAXED_KEY) as relaxed:
        answer = ask(relaxed, "openai-block", user(f"Mail {PART_VALUE}."), False)  # its layer comes last

    assert answer.text == f"Echo: Mail {PART_VALUE}."
    assert PART_VALUE.encode() in upstreams["openai"].body()
    assert recorder.last() is None
