"""DLP end to end with the ``anthropic`` SDK as the client (``/v1/messages``), in front of every upstream.

The Anthropic upstream gets the client's request natively (forwarded, after filtering), the others by
translation. The same guarantees as with the ``openai`` SDK (:mod:`tests.test_dlp_openai_clients`),
for the places an Anthropic request carries text: the system prompt as blocks and as a string, user
messages as a string and as blocks, ``tool_use`` input, ``tool_result`` content as a string and as
blocks; and ``count_tokens``. Errors come in Anthropic's shape. The setting is described in
:mod:`tests.dlp_end_to_end`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import MessageParam, TextBlockParam, ToolParam

from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer
from tests.dlp_end_to_end import (
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

SEND_MAIL: ToolParam = {
    "name": "send_mail",
    "input_schema": {"type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]},
}
LOOKUP_KEY: ToolParam = {"name": "lookup_key", "input_schema": {"type": "object", "properties": {}}}
SYSTEM: list[TextBlockParam] = [{"type": "text", "text": f"You assist {SYSTEM_VALUE}."}]


def conversation() -> list[MessageParam]:
    """A value in each place of a Messages request (with :data:`SYSTEM`): see ``RAW_VALUES``."""
    return [
        {"role": "user", "content": f"Mail {PART_VALUE} the report."},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Sending."},
                {"type": "tool_use", "id": "toolu_1", "name": "send_mail", "input": {"to": ARGUMENT_VALUE}},
                {"type": "tool_use", "id": "toolu_2", "name": "lookup_key", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": f"Sent, and copied to {RESULT_VALUE}.",
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": f"The key: {KEY_VALUE}"}],
                },
                {"type": "text", "text": f"Now tell {LAST_VALUE}."},
            ],
        },
    ]


def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


def ask(
    client: anthropic.Anthropic,
    model: str,
    messages: list[MessageParam],
    stream: bool,
    *,
    received: list[str] | None = None,
    **extra: Any,
) -> Answer:
    """The client's answer; a stream's text pieces also go to ``received`` as they come."""
    if not stream:
        message = client.messages.create(model=model, max_tokens=1000, messages=messages, **extra)
        text = "".join(block.text for block in message.content if block.type == "text")
        return Answer(
            text, [(block.name, block.input) for block in message.content if block.type == "tool_use"]
        )
    texts: list[str] = [] if received is None else received
    names: dict[int, str] = {}
    inputs: dict[int, str] = {}
    pieces = 0
    with client.messages.create(
        model=model, max_tokens=1000, messages=messages, stream=True, **extra
    ) as events:
        for event in events:
            if event.type == "content_block_start" and event.content_block.type == "tool_use":
                names[event.index] = event.content_block.name
            elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                texts.append(event.delta.text)
                pieces += 1
            elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                inputs[event.index] = inputs.get(event.index, "") + event.delta.partial_json
                pieces += bool(event.delta.partial_json)
    calls = [(names[i], json.loads(inputs.get(i) or "{}")) for i in sorted(names)]
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


def sdk(server: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=DEFAULT_TEST_KEY, max_retries=0, timeout=10)


@pytest.fixture(scope="module")
def client(gateway: GatewayServer) -> Iterator[anthropic.Anthropic]:
    with sdk(gateway) as client:
        yield client


@pytest.fixture(scope="module")
def failing_client(failing_gateway: GatewayServer) -> Iterator[anthropic.Anthropic]:
    with sdk(failing_gateway) as client:
        yield client


STREAM = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
EVERY_UPSTREAM = pytest.mark.parametrize("name", UPSTREAMS)
NATIVE_UPSTREAMS = pytest.mark.parametrize("name", ["anthropic", "openai"])


# --- 1. no raw value reaches an upstream -----------------------------------------------------------------


@EVERY_UPSTREAM
@STREAM
def test_no_raw_value_reaches_the_upstream(
    client: anthropic.Anthropic,
    upstreams: dict[str, Upstream],
    recorder: FindingsRecorder,
    name: str,
    stream: bool,
) -> None:
    upstream = upstreams[name]
    answer = ask(
        client, f"{name}-redact", conversation(), stream, system=SYSTEM, tools=[SEND_MAIL, LOOKUP_KEY]
    )

    body = upstream.body()
    assert_no_raw_value(body)
    assert body.count(b"[EMAIL_ADDRESS]") == CONVERSATION_FINDINGS["EMAIL_ADDRESS"]
    assert body.count(b"[AWS_ACCESS_KEY]") == CONVERSATION_FINDINGS["AWS_ACCESS_KEY"]
    assert answer.text.startswith(("Echo: ", "Tool result: ", "Results: "))  # the fakes' echoes
    assert_no_raw_value(answer.text)
    assert recorder.last() == findings(CONVERSATION_FINDINGS, "request", "redact")


def test_no_raw_value_reaches_count_tokens(
    client: anthropic.Anthropic, upstreams: dict[str, Upstream], recorder: FindingsRecorder
) -> None:
    client.messages.count_tokens(
        model="anthropic-redact", system=f"You assist {SYSTEM_VALUE}.", messages=conversation()
    )

    (request,) = upstreams["anthropic"].fake.requests_to("/v1/messages/count_tokens")
    assert_no_raw_value(request.body)
    assert request.body.count(b"[EMAIL_ADDRESS]") == CONVERSATION_FINDINGS["EMAIL_ADDRESS"]
    assert recorder.last() == findings(CONVERSATION_FINDINGS, "request", "redact")


# --- 2. block --------------------------------------------------------------------------------------------


@EVERY_UPSTREAM
@STREAM
def test_a_blocked_request_reaches_no_upstream(
    client: anthropic.Anthropic,
    upstreams: dict[str, Upstream],
    recorder: FindingsRecorder,
    name: str,
    stream: bool,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(client, f"{name}-block", conversation(), stream, system=SYSTEM, tools=[SEND_MAIL, LOOKUP_KEY])

    error = caught.value
    assert error.status_code == 400
    assert isinstance(error.body, dict) and error.body["error"]["type"] == "invalid_request_error"
    assert "it contains AWS_ACCESS_KEY, EMAIL_ADDRESS" in error.body["error"]["message"]
    assert_no_raw_value(error.response.text)
    assert upstreams[name].bodies() == []
    assert recorder.last() == findings(CONVERSATION_FINDINGS, "request", "block")


# --- 3. pseudonyms ---------------------------------------------------------------------------------------


@EVERY_UPSTREAM
@STREAM
def test_pseudonyms_are_restored_in_the_answer(
    client: anthropic.Anthropic,
    upstreams: dict[str, Upstream],
    recorder: FindingsRecorder,
    name: str,
    stream: bool,
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
def test_pseudonyms_are_restored_in_tool_use_input(
    client: anthropic.Anthropic, upstreams: dict[str, Upstream], name: str, stream: bool
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
    client: anthropic.Anthropic,
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
    client: anthropic.Anthropic,
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
    client: anthropic.Anthropic, upstreams: dict[str, Upstream], name: str, stream: bool
) -> None:
    upstreams[name].answer(ANSWER, ONE_CHAR)
    received: list[str] = []

    with pytest.raises(anthropic.APIStatusError) as caught:  # a stream: an error event where the value was
        ask(client, f"{name}-answers-block", user("Who?"), stream, received=received)

    error = caught.value.body
    assert isinstance(error, dict) and error["error"]["type"] == "invalid_request_error"
    assert (
        error["error"]["message"]
        == "The answer was blocked by the data-loss prevention policy: it contains EMAIL_ADDRESS."
    )
    assert "".join(received) == ("Write to " if stream else "")


# --- 5. log ----------------------------------------------------------------------------------------------


def post(server: GatewayServer, key: str, body: dict[str, Any]) -> bytes:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{server.url}/v1/messages", json=body, headers=headers) as response,
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
    request = {
        "model": f"{name}-log",
        "max_tokens": 100,
        "messages": user(f"Mail {PART_VALUE}."),
        "stream": stream,
    }

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


@NATIVE_UPSTREAMS
@pytest.mark.parametrize("failure", ["crash", "thread-timeout", "async-timeout"])
@STREAM
def test_a_failing_filter_refuses_the_request(
    failing_client: anthropic.Anthropic, upstreams: dict[str, Upstream], name: str, failure: str, stream: bool
) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        ask(failing_client, f"{name}-{failure}", user(f"Mail {PART_VALUE}."), stream)

    error = caught.value
    assert error.status_code == 503
    assert isinstance(error.body, dict) and error.body["error"]["type"] == "api_error"
    assert "data-loss prevention filters could not check" in error.body["error"]["message"]
    assert upstreams[name].bodies() == []


@NATIVE_UPSTREAMS
@STREAM
def test_a_filter_failing_on_the_answer_ends_it_with_an_error(
    failing_client: anthropic.Anthropic, name: str, stream: bool
) -> None:
    with pytest.raises(
        anthropic.APIStatusError
    ) as caught:  # a stream: an error event, not a broken connection
        ask(failing_client, f"{name}-crash-on-answers", user("Hello"), stream)

    error = caught.value.body
    assert isinstance(error, dict) and error["error"]["type"] == "api_error"
    assert "data-loss prevention filters could not check" in error["error"]["message"]


@NATIVE_UPSTREAMS
def test_a_failing_filter_lets_the_request_pass_when_allowed(
    failing_client: anthropic.Anthropic,
    upstreams: dict[str, Upstream],
    recorder: FindingsRecorder,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    request_ids = []
    for _ in range(3):
        raw = failing_client.messages.with_raw_response.create(
            model=f"{name}-crash-allow", max_tokens=100, messages=user("Mail nobody.")
        )
        assert [block.type for block in raw.parse().content] == ["text"]
        request_ids.append(raw.headers["x-request-id"])

    assert len(upstreams[name].bodies()) == 3
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "lockgate.dlp" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 3
    for request_id, warning in zip(request_ids, warnings, strict=True):
        assert warning.startswith(f"request {request_id}: DLP filter crashing failed: RuntimeError")
    assert recorder.settled() == [{("error", "request", "allow"): 1}] * 3
