"""Upstream error answers reach the client rebuilt in its dialect, with the gateway's secrets scrubbed.

The fakes answer errors whose message quotes the request's headers (as some OpenAI-compatible servers
and debugging proxies do): the deployment's key and a header whose value comes from the environment.
Through the official SDKs, the client's error keeps the upstream's message, type and code, in its own
dialect's shape, and holds neither secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway_core.redaction import MARKER
from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.one_call import one_call

CLAUDE = "claude-sonnet-4-5"
TEAM_TOKEN = "team-token-7c1e0b5d9a3f42e8"
MESSAGE = "Invalid value for 'temperature': expected a number."


@pytest.fixture(scope="module")
def gpt_upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def claude_upstream() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def gpt(gpt_upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    gpt_upstream.reset()
    yield gpt_upstream
    gpt_upstream.reset()


@pytest.fixture
def claude(claude_upstream: FakeAnthropic) -> Iterator[FakeAnthropic]:
    claude_upstream.reset()
    yield claude_upstream
    claude_upstream.reset()


@pytest.fixture(scope="module")
def gateway(gpt_upstream: FakeOpenAI, claude_upstream: FakeAnthropic) -> Iterator[GatewayServer]:
    headers = {"X-Team-Token": "${LG_LEAK_TEST_TEAM_TOKEN}"}  # a secret the configuration resolves
    config = {
        "models": {
            "gpt-4o-mini": {
                "deployments": [
                    {
                        "provider": "openai",
                        "base_url": gpt_upstream.base_url,
                        "api_key": gpt_upstream.api_key,
                        "headers": headers,
                    }
                ]
            },
            "claude": {
                "deployments": [
                    {
                        "provider": "anthropic",
                        "base_url": claude_upstream.url,
                        "api_key": claude_upstream.api_key,
                        "model": CLAUDE,
                        "headers": headers,
                    }
                ]
            },
        }
    }
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LG_LEAK_TEST_TEAM_TOKEN", TEAM_TOKEN)
        server = GatewayServer(one_call(config))
    with server:
        yield server


@pytest.fixture
def openai_client(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0) as client:
        yield client


@pytest.fixture
def anthropic_client(gateway: GatewayServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.api_key, max_retries=0) as client:
        yield client


def assert_no_secret(text: str, *keys: str) -> None:
    for secret in (*keys, TEAM_TOKEN):
        assert secret not in text
    assert MARKER in text  # the quoted headers were there, scrubbed


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_an_openai_upstream_error_quoting_the_key_reaches_openai_clients_scrubbed(
    openai_client: openai.OpenAI, gpt: FakeOpenAI, stream: bool
) -> None:
    gpt.behave(
        status=400, message=MESSAGE, type="invalid_request_error", code="invalid_value", echo_headers=True
    )
    assert gpt.api_key  # the fake really echoes it: see the upstream's own answer
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=stream
        )

    text = caught.value.response.text
    assert_no_secret(text, gpt.api_key)
    error = caught.value.body
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"].startswith(MESSAGE)
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_value")


def test_an_upstream_server_error_quoting_the_key_is_a_scrubbed_502(
    gateway: GatewayServer, gpt: FakeOpenAI
) -> None:
    gpt.behave(status=500, message="Upstream exploded.", echo_headers=True)
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {gateway.api_key}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 502
    assert_no_secret(response.text, gpt.api_key)
    assert "Upstream exploded." in response.json()["error"]["message"]


def test_an_anthropic_upstream_error_quoting_the_key_reaches_anthropic_clients_scrubbed(
    anthropic_client: anthropic.Anthropic, claude: FakeAnthropic
) -> None:
    claude.behave(status=400, error_type="invalid_request_error", message=MESSAGE, echo_headers=True)
    with pytest.raises(anthropic.BadRequestError) as caught:
        anthropic_client.messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )

    assert_no_secret(caught.value.response.text, claude.api_key)
    body: Any = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(MESSAGE)


def test_an_anthropic_upstream_error_reaches_openai_clients_scrubbed(
    openai_client: openai.OpenAI, claude: FakeAnthropic
) -> None:
    claude.behave(status=429, error_type="rate_limit_error", message="Slow down.", echo_headers=True)
    with pytest.raises(openai.RateLimitError) as caught:
        openai_client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])

    assert_no_secret(caught.value.response.text, claude.api_key)
    body: Any = caught.value.body
    assert body["message"].startswith("Slow down.")
    assert (body["type"], body["code"]) == ("rate_limit_error", "rate_limit_exceeded")


def test_an_openai_upstream_error_reaches_anthropic_clients_scrubbed(
    anthropic_client: anthropic.Anthropic, gpt: FakeOpenAI
) -> None:
    gpt.behave(status=400, message=MESSAGE, code="invalid_value", echo_headers=True)
    with pytest.raises(anthropic.BadRequestError) as caught:
        anthropic_client.messages.create(
            model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )

    assert_no_secret(caught.value.response.text, gpt.api_key)
    body: Any = caught.value.body
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(MESSAGE)


def test_an_error_event_quoting_the_key_mid_stream_reaches_anthropic_clients_scrubbed(
    anthropic_client: anthropic.Anthropic, claude: FakeAnthropic
) -> None:
    claude.behave(stream_error="api_error", stream_error_message=f"Internal error for key {claude.api_key}")
    with pytest.raises(anthropic.APIStatusError) as caught:
        for _event in anthropic_client.messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass

    body: Any = caught.value.body
    assert claude.api_key not in str(body) and MARKER in str(body)
    assert body["error"]["type"] == "api_error"
