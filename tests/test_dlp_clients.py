"""DLP end to end with each client SDK, ``openai`` and ``anthropic``, in front of every upstream dialect.

What each upstream received is read from its fake's recording: the raw values are gone and the
placeholders are there, for every place a request of the SDK carries text (see the conversations of
:class:`~tests.dlp_end_to_end.OpenAIClient` and :class:`~tests.dlp_end_to_end.AnthropicClient`).
Blocked requests and failing filters never reach an upstream, and the client gets the error in its
SDK's shape; pseudonyms come back in answers, streamed one character per chunk included; values the
upstream writes itself are redacted in the answer; ``log`` changes no byte. What only one SDK has is
in :mod:`tests.test_dlp_openai_clients` and :mod:`tests.test_dlp_anthropic_clients`; the setting is
described in :mod:`tests.dlp_end_to_end`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gateway_core.testing import GatewayServer
from tests.dlp_end_to_end import (
    ANSWER,
    CLIENTS,
    CONVERSATION_FINDINGS,
    DELIVERIES,
    KEY_VALUE,
    MODEL_VALUE,
    ONE_CHAR,
    PART_VALUE,
    RELAXED_KEY,
    RESULT_VALUE,
    UPSTREAMS,
    Answer,
    Client,
    FindingsRecorder,
    Upstreams,
    assert_no_raw_value,
    findings,
    without_ids,
)

pytestmark = pytest.mark.usefixtures("dlp_test")


@pytest.fixture(scope="module", params=CLIENTS, ids=[c.name for c in CLIENTS])
def sdk(request: pytest.FixtureRequest) -> type[Client]:
    """Each client SDK in turn."""
    client: type[Client] = request.param
    return client


@pytest.fixture(scope="module")
def client(sdk: type[Client], dlp_gateway: GatewayServer) -> Iterator[Client]:
    with sdk(dlp_gateway) as client:
        yield client


@pytest.fixture(scope="module")
def failing_client(sdk: type[Client], dlp_failing_gateway: GatewayServer) -> Iterator[Client]:
    with sdk(dlp_failing_gateway) as client:
        yield client


STREAM = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
EVERY_UPSTREAM = pytest.mark.parametrize("name", UPSTREAMS)
NATIVE_UPSTREAMS = pytest.mark.parametrize("name", ["openai", "anthropic"])


# --- 1. no raw value reaches an upstream -----------------------------------------------------------------


@EVERY_UPSTREAM
@STREAM
def test_no_raw_value_reaches_the_upstream(
    client: Client, dlp_upstreams: Upstreams, dlp_recorder: FindingsRecorder, name: str, stream: bool
) -> None:
    upstream = dlp_upstreams[name]
    answer = client.ask_conversation(f"{name}-redact", stream)

    body = upstream.body()
    assert_no_raw_value(body)
    assert body.count(b"[EMAIL_ADDRESS]") == CONVERSATION_FINDINGS["EMAIL_ADDRESS"]
    assert body.count(b"[AWS_ACCESS_KEY]") == CONVERSATION_FINDINGS["AWS_ACCESS_KEY"]
    assert answer.text.startswith(("Echo: ", "Tool result: ", "Results: "))  # the fakes' echoes
    if client.conversation_ends_in_text:
        assert "[EMAIL_ADDRESS]" in answer.text  # the echo of the last message, as the upstream got it
    assert_no_raw_value(answer.text)
    assert dlp_recorder.last() == findings(CONVERSATION_FINDINGS, "request", "redact")


# --- 2. block --------------------------------------------------------------------------------------------


@EVERY_UPSTREAM
@STREAM
def test_a_blocked_request_reaches_no_upstream(
    client: Client, dlp_upstreams: Upstreams, dlp_recorder: FindingsRecorder, name: str, stream: bool
) -> None:
    with pytest.raises(client.bad_request) as caught:
        client.ask_conversation(f"{name}-block", stream)

    error = client.error(caught.value)
    assert error.status == 400 and error.kind == client.blocked_kind
    assert "it contains AWS_ACCESS_KEY, EMAIL_ADDRESS" in error.message
    assert_no_raw_value(error.response)
    assert dlp_upstreams[name].bodies() == []
    assert dlp_recorder.last() == findings(CONVERSATION_FINDINGS, "request", "block")


# --- 3. pseudonyms ---------------------------------------------------------------------------------------


@EVERY_UPSTREAM
@STREAM
def test_pseudonyms_are_restored_in_the_answer(
    client: Client, dlp_upstreams: Upstreams, dlp_recorder: FindingsRecorder, name: str, stream: bool
) -> None:
    upstream = dlp_upstreams[name]
    upstream.stream_in(ONE_CHAR)  # placeholders reach the gateway split across chunks
    message = f"Mail {PART_VALUE} and {RESULT_VALUE} the key {KEY_VALUE}."

    answer = client.ask(f"{name}-pseudo", message, stream)

    body = upstream.body()
    assert_no_raw_value(body)
    assert b"Mail [EMAIL_ADDRESS_1] and [EMAIL_ADDRESS_2] the key [AWS_ACCESS_KEY_1]." in body
    assert answer.text == f"Echo: {message}"
    if stream:
        assert answer.pieces > 20  # the text outside placeholders still came one character at a time
    assert dlp_recorder.last() == {
        ("EMAIL_ADDRESS", "request", "pseudonymize"): 2,
        ("AWS_ACCESS_KEY", "request", "pseudonymize"): 1,
    }


@pytest.mark.parametrize("name", ["openai", "anthropic", "gemini"])
@STREAM
def test_pseudonyms_are_restored_in_tool_call_arguments(
    client: Client, dlp_upstreams: Upstreams, name: str, stream: bool
) -> None:
    upstream = dlp_upstreams[name]
    upstream.call_tool("send_mail", {"to": "[EMAIL_ADDRESS_1]", "subject": "For [EMAIL_ADDRESS_1]"}, ONE_CHAR)

    answer = client.ask(f"{name}-pseudo", f"Mail {PART_VALUE}.", stream, tools=["send_mail"])

    assert_no_raw_value(upstream.body())
    assert answer.calls == [("send_mail", {"to": PART_VALUE, "subject": f"For {PART_VALUE}"})]


# --- 4. values in answers --------------------------------------------------------------------------------


@EVERY_UPSTREAM
@pytest.mark.parametrize("delivery", DELIVERIES)
def test_a_value_in_the_answer_is_redacted(
    client: Client, dlp_upstreams: Upstreams, dlp_recorder: FindingsRecorder, name: str, delivery: str
) -> None:
    text, chunks, stream = DELIVERIES[delivery]
    upstream = dlp_upstreams[name]
    upstream.answer(text, chunks)

    answer = client.ask(f"{name}-answers", f"Who? The key is {KEY_VALUE}.", stream)

    assert answer.text == text.replace(PART_VALUE, "[EMAIL_ADDRESS]")
    assert KEY_VALUE.encode() in upstream.body()  # direction: response leaves requests as they are
    assert dlp_recorder.last() == {("EMAIL_ADDRESS", "response", "redact"): 1}


@EVERY_UPSTREAM
@pytest.mark.parametrize("delivery", ["whole", "one-char-chunks"])
def test_a_value_the_upstream_writes_keeps_its_pseudonym(
    client: Client, dlp_upstreams: Upstreams, dlp_recorder: FindingsRecorder, name: str, delivery: str
) -> None:
    _, chunks, stream = DELIVERIES[delivery]
    dlp_upstreams[name].answer(f"Write to {MODEL_VALUE}, not [EMAIL_ADDRESS_1].", chunks)

    answer = client.ask(f"{name}-pseudo-both", f"Mail {PART_VALUE}.", stream)

    # Only the value the client sent comes back; the one the upstream wrote keeps its placeholder.
    assert answer.text == f"Write to [EMAIL_ADDRESS_2], not {PART_VALUE}."
    assert dlp_recorder.last() == {
        ("EMAIL_ADDRESS", "request", "pseudonymize"): 1,
        ("EMAIL_ADDRESS", "response", "pseudonymize"): 1,
    }


@NATIVE_UPSTREAMS
@STREAM
def test_a_value_to_block_in_the_answer_never_reaches_the_client(
    client: Client, dlp_upstreams: Upstreams, name: str, stream: bool
) -> None:
    dlp_upstreams[name].answer(ANSWER, ONE_CHAR)
    received: list[str] = []

    with pytest.raises(client.any_error) as caught:  # a stream: an error event where the value was
        client.ask(f"{name}-answers-block", "Who?", stream, received=received)

    error = client.error(caught.value)
    assert error.kind == client.blocked_kind
    assert (
        error.message
        == "The answer was blocked by the data-loss prevention policy: it contains EMAIL_ADDRESS."
    )
    assert "".join(received) == ("Write to " if stream else "")


# --- 5. log ----------------------------------------------------------------------------------------------


@EVERY_UPSTREAM
@STREAM
def test_log_changes_no_byte(
    client: Client, dlp_upstreams: Upstreams, dlp_recorder: FindingsRecorder, name: str, stream: bool
) -> None:
    upstream = dlp_upstreams[name]
    upstream.stream_in(5)

    logged = client.post(f"{name}-log", f"Mail {PART_VALUE}.", stream)
    counts = dlp_recorder.last()
    dlp_recorder.clear()
    plain = client.post(f"{name}-log", f"Mail {PART_VALUE}.", stream, RELAXED_KEY)  # "relaxed": DLP off

    assert without_ids(logged) == without_ids(plain)
    assert stream or PART_VALUE.encode() in logged  # (a stream splits it across chunks)
    with_dlp, without_dlp = upstream.bodies()
    assert with_dlp == without_dlp
    assert PART_VALUE.encode() in with_dlp
    assert counts == {("EMAIL_ADDRESS", "request", "log"): 1, ("EMAIL_ADDRESS", "response", "log"): 1}
    assert dlp_recorder.last() is None


# --- 6. failing filters ----------------------------------------------------------------------------------


@NATIVE_UPSTREAMS
@pytest.mark.parametrize("failure", ["crash", "thread-timeout", "async-timeout"])
@STREAM
def test_a_failing_filter_refuses_the_request(
    failing_client: Client, dlp_upstreams: Upstreams, name: str, failure: str, stream: bool
) -> None:
    with pytest.raises(failing_client.unavailable) as caught:
        failing_client.ask(f"{name}-{failure}", f"Mail {PART_VALUE}.", stream)

    error = failing_client.error(caught.value)
    assert error.status == 503 and error.kind == failing_client.unavailable_kind
    assert "data-loss prevention filters could not check" in error.message
    assert dlp_upstreams[name].bodies() == []


@NATIVE_UPSTREAMS
@STREAM
def test_a_filter_failing_on_the_answer_ends_it_with_an_error(
    failing_client: Client, name: str, stream: bool
) -> None:
    # A stream ends in an error event, not a broken connection.
    with pytest.raises(failing_client.any_error) as caught:
        failing_client.ask(f"{name}-crash-on-answers", "Hello", stream)

    error = failing_client.error(caught.value)
    assert error.kind == failing_client.unavailable_kind
    assert "data-loss prevention filters could not check" in error.message
    if not stream:
        assert isinstance(caught.value, failing_client.unavailable)


@NATIVE_UPSTREAMS
def test_a_failing_filter_lets_the_request_pass_when_allowed(
    failing_client: Client,
    dlp_upstreams: Upstreams,
    dlp_recorder: FindingsRecorder,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    request_ids = []
    for _ in range(3):
        answer, request_id = failing_client.ask_with_request_id(f"{name}-crash-allow", "Mail nobody.")
        assert answer == Answer("Echo: Mail nobody.")  # one choice or content block, no tool call
        request_ids.append(request_id)

    assert len(dlp_upstreams[name].bodies()) == 3
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "lockgate.dlp" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 3
    for request_id, warning in zip(request_ids, warnings, strict=True):
        assert warning.startswith(f"request {request_id}: DLP filter crashing failed: RuntimeError")
    assert dlp_recorder.settled() == [{("error", "request", "allow"): 1}] * 3
