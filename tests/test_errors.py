"""Errors as an OpenAI SDK user meets them: status, exception class, OpenAI error shape, request id,
and never a stack trace or a secret in the body."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello gateway"}]
WRONG_UPSTREAM_KEY = "sk-wrong-upstream-key-9d8c7b6a5f4e"


def expect_error(
    call: Callable[[], Any],
    status: int,
    exception: type[openai.APIStatusError] = openai.APIStatusError,
    *,
    code: str | None = None,
    fake: FakeOpenAI | None = None,
) -> openai.APIStatusError:
    """Run ``call``; check it raised ``exception`` with ``status`` and a clean OpenAI error body."""
    with pytest.raises(exception) as caught:
        call()
    error = caught.value
    assert error.status_code == status
    response = error.response
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert isinstance(body["error"]["type"], str)
    if code is not None:
        assert error.code == code
    text = response.text
    assert "Traceback" not in text
    assert 'File "' not in text
    assert WRONG_UPSTREAM_KEY not in text
    if fake is not None:
        assert fake.api_key not in text
    return error


# --- the client's request is wrong ------------------------------------------------------------------------


def test_malformed_json_is_400(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    error = expect_error(
        lambda: client.post(
            "/chat/completions",
            content=b'{"model": "gpt-4o-mini", "messages": [',
            cast_to=ChatCompletion,
            options={"headers": {"Content-Type": "application/json"}},
        ),
        400,
        openai.BadRequestError,
    )
    assert "JSON" in error.message
    assert fake.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-4o-mini"}, "messages"),
        ({"messages": HELLO}, "model"),
        ({"model": "gpt-4o-mini", "messages": []}, "messages"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "beep"}]}, "messages[0].role"),
        (
            {"model": "gpt-4o-mini", "messages": HELLO, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        ({"model": "gpt-4o-mini", "messages": HELLO, "stream": "yes"}, "stream"),
        (["not", "an", "object"], None),
    ],
    ids=[
        "missing-messages",
        "missing-model",
        "empty-messages",
        "bad-role",
        "stream-options-alone",
        "bad-stream",
        "array",
    ],
)
def test_invalid_chat_fields_are_400(
    client: openai.OpenAI, fake: FakeOpenAI, body: Any, param: str | None
) -> None:
    error = expect_error(
        lambda: client.post("/chat/completions", body=body, cast_to=ChatCompletion),
        400,
        openai.BadRequestError,
    )
    assert error.param == param
    assert fake.requests == []


def test_invalid_embedding_fields_are_400(client: openai.OpenAI) -> None:
    error = expect_error(
        lambda: client.embeddings.create(model="mock-embedding", input=""), 400, openai.BadRequestError
    )
    assert error.param == "input"


def test_missing_key_is_401(client: openai.OpenAI) -> None:
    no_key = {"Authorization": openai.omit}
    expect_error(
        lambda: client.chat.completions.create(model="mock", messages=HELLO, extra_headers=no_key),
        401,
        openai.AuthenticationError,
        code="missing_api_key",
    )
    expect_error(lambda: client.models.list(extra_headers=no_key), 401, openai.AuthenticationError)


def test_bad_key_is_401(gateway: GatewayServer) -> None:
    with openai.OpenAI(
        base_url=gateway.base_url, api_key="lg-not-a-real-key-000000000", max_retries=0
    ) as sdk:
        expect_error(
            lambda: sdk.chat.completions.create(model="mock", messages=HELLO),
            401,
            openai.AuthenticationError,
            code="invalid_api_key",
        )
        expect_error(sdk.models.list, 401, openai.AuthenticationError)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer lg-not-a-real-key-000000000"},
        {"X-API-Key": "lg-not-a-real-key-000000000"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["none", "bad-bearer", "bad-x-api-key", "basic-auth"],
)
async def test_bad_credentials_on_the_wire(gateway: GatewayServer, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        response = await http.post(
            "/v1/chat/completions", json={"model": "mock", "messages": HELLO}, headers=headers
        )

    assert response.status_code == 401
    assert response.headers["x-request-id"]
    assert response.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")


@pytest.mark.parametrize("scheme", ["bearer", "x-api-key"])
async def test_both_key_headers_are_accepted(gateway: GatewayServer, scheme: str) -> None:
    headers = (
        {"Authorization": f"Bearer {gateway.api_key}"}
        if scheme == "bearer"
        else {"X-API-Key": gateway.api_key}
    )
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        response = await http.post(
            "/v1/chat/completions", json={"model": "mock", "messages": HELLO}, headers=headers
        )

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello gateway"


def test_model_the_key_may_not_use_is_403(
    client: openai.OpenAI, fake: FakeOpenAI, mock_only_key: str
) -> None:
    limited = client.with_options(api_key=mock_only_key)
    error = expect_error(
        lambda: limited.chat.completions.create(model="gpt-4o-mini", messages=HELLO),
        403,
        openai.PermissionDeniedError,
        code="model_not_allowed",
    )
    assert error.param == "model"
    assert fake.requests == []
    assert limited.chat.completions.create(model="mock-echo", messages=HELLO).choices


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    error = expect_error(
        lambda: client.chat.completions.create(model="gpt-9-ultra", messages=HELLO),
        404,
        openai.NotFoundError,
        code="model_not_found",
    )
    assert "gpt-9-ultra" in error.message
    expect_error(
        lambda: client.embeddings.create(model="no-such-embedder", input="x"), 404, openai.NotFoundError
    )


def test_unknown_route_is_404(client: openai.OpenAI) -> None:
    expect_error(lambda: client.get("/no/such/route", cast_to=object), 404, openai.NotFoundError)
    expect_error(lambda: client.post("/completions", body={}, cast_to=object), 404, openai.NotFoundError)


def test_wrong_method_is_405(client: openai.OpenAI) -> None:
    expect_error(lambda: client.get("/chat/completions", cast_to=object), 405)
    expect_error(lambda: client.delete("/models", cast_to=object), 405)


def test_body_over_the_limit_is_413(client: openai.OpenAI, gateway: GatewayServer, fake: FakeOpenAI) -> None:
    limit = gateway.config.server.max_body_bytes
    huge: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * (limit + 1)}]
    error = expect_error(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=huge),
        413,
    )
    assert str(limit) in error.message
    assert fake.requests == []


async def test_body_over_the_limit_without_content_length_is_413(gateway: GatewayServer) -> None:
    limit = gateway.config.server.max_body_bytes

    async def chunked() -> Any:  # no Content-Length: the limit must hold while reading
        yield b'{"model": "mock", "messages": [{"role": "user", "content": "'
        for _ in range(4):
            yield b"y" * (limit // 2)
        yield b'"}]}'

    headers = {"X-API-Key": gateway.api_key, "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        response = await http.post("/v1/chat/completions", content=chunked(), headers=headers)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_wrong_content_type_is_415(client: openai.OpenAI) -> None:
    expect_error(
        lambda: client.post(
            "/chat/completions",
            content=b"model=mock",
            cast_to=ChatCompletion,
            options={"headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        ),
        415,
    )


async def test_the_clients_request_id_is_kept(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        answered = await http.post(
            "/v1/chat/completions",
            json={"model": "mock", "messages": HELLO},
            headers={"X-API-Key": gateway.api_key, "X-Request-Id": "trace-42.a"},
        )
        refused = await http.get("/v1/models", headers={"X-Request-Id": "trace-43.b"})
        unsafe = await http.get("/v1/models", headers={"X-Request-Id": "<script>"})

    assert answered.headers["x-request-id"] == "trace-42.a"
    assert refused.status_code == 401
    assert refused.headers["x-request-id"] == "trace-43.b"
    assert unsafe.headers["x-request-id"] not in ("", "<script>")


# --- the upstream fails -----------------------------------------------------------------------------------


def test_upstream_429_keeps_its_retry_after(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.behave(
        status=429,
        message="Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3.",
        type="requests",
        code="rate_limit_exceeded",
        headers={"retry-after": "7"},
    )
    error = expect_error(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=HELLO),
        429,
        openai.RateLimitError,
        code="rate_limit_exceeded",
        fake=fake,
    )
    assert error.response.headers["retry-after"] == "7"
    assert "Rate limit reached for gpt-4o-mini" in error.message


def test_upstream_400_is_the_clients_error_with_the_upstreams_message(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    error = expect_error(
        lambda: client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            extra_body={"foo_extra": {"a": 1}},
        ),
        400,
        openai.BadRequestError,
        fake=fake,
    )
    assert error.response.json()["error"]["message"] == "Unrecognized request argument supplied: foo_extra"
    (forwarded,) = fake.requests_to("/v1/chat/completions")
    assert forwarded.json["foo_extra"] == {"a": 1}


def test_upstream_rejecting_the_gateways_key_is_502(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    error = expect_error(
        lambda: client.chat.completions.create(model="gpt-misconfigured", messages=HELLO),
        502,
        openai.InternalServerError,
        code="upstream_auth_error",
        fake=fake,
    )
    (forwarded,) = fake.requests_to("/v1/chat/completions")
    assert forwarded.headers["authorization"] == f"Bearer {WRONG_UPSTREAM_KEY}"
    text = error.response.text
    assert "Incorrect API key" not in text
    assert WRONG_UPSTREAM_KEY[-4:] not in text


@pytest.mark.parametrize("status", [500, 503])
def test_upstream_server_errors_are_502(client: openai.OpenAI, fake: FakeOpenAI, status: int) -> None:
    fake.behave(status=status)
    expect_error(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=HELLO),
        502,
        openai.InternalServerError,
        fake=fake,
    )


def test_upstream_server_error_on_a_stream_is_502_before_any_chunk(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    fake.behave(status=503, message="The engine is currently overloaded, please try again later.")
    expect_error(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True),
        502,
        openai.InternalServerError,
        fake=fake,
    )


def test_upstream_answering_a_stream_with_plain_json_is_502(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.behave(malformed_json=True)
    expect_error(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True),
        502,
        openai.InternalServerError,
        fake=fake,
    )


def test_upstream_too_slow_is_504(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.behave(delay=3.0)
    started = time.monotonic()
    expect_error(
        lambda: client.chat.completions.create(model="gpt-slow", messages=HELLO),
        504,
        openai.InternalServerError,
        code="upstream_timeout",
        fake=fake,
    )
    assert time.monotonic() - started < 2.5  # the deployment's read timeout is 0.5 s


def test_upstream_refusing_connections_is_502(client: openai.OpenAI) -> None:
    expect_error(
        lambda: client.chat.completions.create(model="gpt-unreachable", messages=HELLO),
        502,
        openai.InternalServerError,
        code="upstream_unreachable",
    )


def test_upstream_malformed_json_is_502(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.behave(malformed_json=True)
    expect_error(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=HELLO),
        502,
        openai.InternalServerError,
        fake=fake,
    )


def test_upstream_unknown_model_is_the_gateways_problem(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.behave(
        status=404,
        message="The model `gpt-4o-mini` does not exist.",
        type="invalid_request_error",
        code="model_not_found",
    )
    error = expect_error(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=HELLO),
        502,
        openai.InternalServerError,
        fake=fake,
    )
    assert error.code != "model_not_found"  # the client asked for a model the gateway serves
