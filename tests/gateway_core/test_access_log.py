"""One access line per model request: what an operator reads in the log, in JSON and in text."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from gateway_core.logs import JsonFormatter, TextFormatter
from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer


def config(access: bool) -> dict[str, Any]:
    return {
        "logging": {"access": access},
        "models": {"mock-echo": {"deployments": [{"provider": "mock", "options": {"chunks": 3}}]}},
    }


@pytest.fixture(scope="module")
def server() -> Iterator[GatewayServer]:
    with GatewayServer(config(access=True)) as running:
        yield running


def sdk(server: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=DEFAULT_TEST_KEY, max_retries=0)


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "lockgate.access"]


def test_a_request_writes_one_line_with_who_what_and_how(
    server: GatewayServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "lockgate.access"), sdk(server) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="mock-echo", messages=[{"role": "user", "content": "hello there"}]
        )
    [record] = access_records(caplog)
    fields: dict[str, Any] = record.fields  # type: ignore[attr-defined]
    assert record.getMessage() == "POST /v1/chat/completions 200"
    assert fields["request_id"] == raw.headers["x-request-id"]
    assert fields["key"] == "test"
    assert (fields["model"], fields["model_group"], fields["provider"]) == ("mock-echo", "mock-echo", "mock")
    assert fields["status"] == 200 and fields["error_type"] is None
    assert fields["prompt_tokens"] > 0 and fields["completion_tokens"] > 0
    assert fields["latency_ms"] >= 0 and fields["stream"] is False
    assert "hello" not in str(fields)  # never the prompt or the answer


def test_a_refused_request_says_why(server: GatewayServer, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, "lockgate.access"),
        sdk(server) as client,
        pytest.raises(openai.NotFoundError),
    ):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    [record] = access_records(caplog)
    fields: dict[str, Any] = record.fields  # type: ignore[attr-defined]
    assert (fields["status"], fields["error_type"], fields["model_group"]) == (
        404,
        "invalid_request_error",
        None,
    )


def test_a_stream_records_its_time_to_first_byte(
    server: GatewayServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "lockgate.access"), sdk(server) as client:
        stream = client.chat.completions.create(
            model="mock-echo", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    [record] = access_records(caplog)
    fields: dict[str, Any] = record.fields  # type: ignore[attr-defined]
    assert fields["stream"] is True
    assert 0 <= fields["ttfb_ms"] <= fields["latency_ms"]


def test_no_line_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    with (
        GatewayServer(config(access=False)) as quiet,
        caplog.at_level(logging.INFO, "lockgate.access"),
        sdk(quiet) as client,
    ):
        client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "hi"}])
    assert access_records(caplog) == []


def record_with_fields(exc_info: Any = None) -> logging.LogRecord:
    record = logging.LogRecord(
        "lockgate.access", logging.INFO, __file__, 1, "POST %s %d", ("/v1/x", 200), exc_info
    )
    record.fields = {"request_id": "req_1", "key": "app", "status": 200, "ttfb_ms": None}
    return record


def test_json_lines_put_the_fields_at_the_top_level() -> None:
    line = orjson.loads(JsonFormatter().format(record_with_fields()))
    assert line["message"] == "POST /v1/x 200"
    assert (line["request_id"], line["key"], line["status"], line["ttfb_ms"]) == ("req_1", "app", 200, None)


def test_text_puts_the_fields_after_the_message() -> None:
    text = TextFormatter().format(record_with_fields())
    assert text.endswith("lockgate.access: POST /v1/x 200 request_id=req_1 key=app status=200")


def test_an_error_keeps_its_traceback_with_secrets_masked() -> None:
    try:
        raise RuntimeError("upstream said: Bearer sk-live-0123456789abcdef")
    except RuntimeError:
        exc_info = sys.exc_info()
    line = orjson.loads(JsonFormatter().format(record_with_fields(exc_info)))
    assert "RuntimeError" in line["traceback"] and "Traceback" in line["traceback"]
    assert "sk-live-0123456789abcdef" not in line["traceback"]
    assert "sk-live-0123456789abcdef" not in TextFormatter().format(record_with_fields(exc_info))
