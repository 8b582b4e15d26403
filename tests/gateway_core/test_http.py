"""Upstream failures become the right client-facing status, with nothing of the gateway's secrets."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from gateway_core.http import error_from_exception, error_from_upstream, forwarded_headers


def openai_error(message: str, type_: str = "invalid_request_error", code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": "messages", "code": code}})


def test_client_mistake_keeps_status_and_upstream_message() -> None:
    error = error_from_upstream(
        400, openai_error("messages is too short", code="invalid_value"), {}, "openai"
    )
    assert (error.status, error.message, error.param, error.code) == (
        400,
        "messages is too short",
        "messages",
        "invalid_value",
    )


def test_unprocessable_entity_is_a_400() -> None:
    assert error_from_upstream(422, b'{"error": "bad field"}', {}, "vllm").status == 400


def test_rate_limit_passes_the_retry_hint() -> None:
    error = error_from_upstream(429, openai_error("slow down", "requests"), {"retry-after": "7"}, "openai")
    assert error.status == 429
    assert error.headers == {"retry-after": "7"}


def test_rate_limit_with_only_milliseconds_gets_a_retry_after_in_seconds() -> None:
    error = error_from_upstream(429, b"", {"retry-after-ms": "2500"}, "openai")
    assert error.headers["retry-after"] == "2"
    assert error.headers["retry-after-ms"] == "2500"


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_credential_failure_is_the_gateways_problem(status: int) -> None:
    body = openai_error("Incorrect API key provided: sk-abc***xyz", code="invalid_api_key")
    error = error_from_upstream(status, body, {}, "openai")
    assert error.status == 502
    assert "sk-" not in error.message


@pytest.mark.parametrize(("status", "expected"), [(500, 502), (503, 502), (529, 502), (504, 504), (408, 504)])
def test_upstream_server_failures(status: int, expected: int) -> None:
    assert error_from_upstream(status, b"<html>oops</html>", {}, "openai").status == expected


def test_transport_failures() -> None:
    assert error_from_exception(TimeoutError(), "openai").status == 504
    assert error_from_exception(aiohttp.ServerDisconnectedError(), "openai").status == 502


def test_forwarded_headers_keep_retry_hints_and_the_upstream_request_id() -> None:
    headers = {
        "retry-after": "1",
        "x-request-id": "req_up",
        "set-cookie": "a=b",
        "openai-organization": "org-1",
    }
    assert forwarded_headers(headers) == {"retry-after": "1", "x-upstream-request-id": "req_up"}
