"""Credential pools as the upstream and the client see them: which key each call used, and the limits.

The fake OpenAI upstream accepts every key of the pool and records the key of each request; the
gateway in front of it is real. Limits shared by replicas use the real Redis of
``LOCKGATE_TEST_REDIS_URL``; Vertex pools use a fake token endpoint and a fake Vertex host.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway_core import ConfigError, Gateway, parse_config
from gateway_core.errors import DeploymentLimited
from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.google_oauth import FakeGoogleOAuth, FakeVertex, make_service_account

REDIS_ENV = "LOCKGATE_TEST_REDIS_URL"
KEYS = ("sk-pool-key-one-000000000000", "sk-pool-key-two-000000000000", "sk-pool-key-three-0000000000")
BODY = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        fake.other_keys.update(KEYS)
        yield fake


@pytest.fixture
def fake(upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    upstream.reset()
    yield upstream
    upstream.reset()


def pool_config(fake: FakeOpenAI, credentials: list[dict[str, Any]], **deployment: Any) -> dict[str, Any]:
    entry = {
        "id": f"pool-{uuid.uuid4().hex[:8]}",
        "provider": "openai",
        "base_url": fake.base_url,
        "model": "gpt-4o-mini",
        "credentials": credentials,
        **deployment,
    }
    return {"models": {"gpt": {"deployments": [entry]}}}


def ask(server: GatewayServer, count: int, body: dict[str, Any] = BODY) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as client:
        return [client.post("/chat/completions", json=body) for _ in range(count)]


def test_round_robin_rotates_the_keys(fake: FakeOpenAI) -> None:
    config = pool_config(fake, [{"api_key": key} for key in KEYS])
    with GatewayServer(config) as server:
        answers = ask(server, 6)
    assert [answer.status_code for answer in answers] == [200] * 6
    assert fake.keys_used() == [*KEYS, *KEYS]


def test_fill_first_uses_the_first_key_until_it_is_limited(fake: FakeOpenAI) -> None:
    config = pool_config(
        fake,
        [{"id": "first", "api_key": KEYS[0], "rpm": 2}, {"api_key": KEYS[1]}],
        credential_strategy="fill_first",
    )
    with GatewayServer(config) as server:
        answers = ask(server, 5)
    assert [answer.status_code for answer in answers] == [200] * 5
    assert fake.keys_used() == [KEYS[0], KEYS[0], KEYS[1], KEYS[1], KEYS[1]]


def test_a_limited_key_is_skipped(fake: FakeOpenAI) -> None:
    config = pool_config(fake, [{"api_key": KEYS[0], "rpm": 1}, {"api_key": KEYS[1]}])
    with GatewayServer(config) as server:
        answers = ask(server, 6)
    assert [answer.status_code for answer in answers] == [200] * 6
    assert Counter(fake.keys_used()) == {KEYS[0]: 1, KEYS[1]: 5}


def test_a_deployment_without_credentials_is_a_pool_of_its_api_key(fake: FakeOpenAI) -> None:
    config = pool_config(fake, [], api_key=fake.api_key)
    with GatewayServer(config) as server:
        assert [answer.status_code for answer in ask(server, 2)] == [200, 200]
    assert fake.keys_used() == [fake.api_key, fake.api_key]


def test_credentials_without_a_key_use_the_deployments(fake: FakeOpenAI) -> None:
    config = pool_config(fake, [{"id": "a", "rpm": 1}, {"id": "b", "api_key": KEYS[1]}], api_key=KEYS[0])
    with GatewayServer(config) as server:
        ask(server, 2)
    assert fake.keys_used() == [KEYS[0], KEYS[1]]


def test_every_key_limited_is_a_429_with_retry_after(fake: FakeOpenAI) -> None:
    config = pool_config(fake, [{"api_key": KEYS[0], "rpm": 1}, {"api_key": KEYS[1], "rpm": 1}])
    with GatewayServer(config) as server:
        answers = ask(server, 4)
    assert [answer.status_code for answer in answers] == [200, 200, 429, 429]
    for answer in answers[2:]:
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.json()["error"]["type"] == "rate_limit_error"
    assert answers[2].json()["error"]["code"] == "deployment_rate_limited"
    assert len(fake.requests) == 2  # the limited calls never reached the upstream


def test_the_deployments_own_rpm_bounds_all_its_keys(fake: FakeOpenAI) -> None:
    config = pool_config(fake, [{"api_key": KEYS[0]}, {"api_key": KEYS[1]}], rpm=3)
    with GatewayServer(config) as server:
        answers = ask(server, 4)
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert len(fake.requests) == 3


def test_tokens_used_count_against_the_keys_tpm(fake: FakeOpenAI) -> None:
    """TPM is checked before a call and counted after it: a key over its tokens is skipped."""
    long_prompt = {"model": "gpt", "messages": [{"role": "user", "content": "word " * 40}]}
    config = pool_config(
        fake,
        [{"api_key": KEYS[0], "tpm": 30}, {"api_key": KEYS[1]}],
        credential_strategy="fill_first",
    )
    with GatewayServer(config) as server:
        assert ask(server, 1, long_prompt)[0].status_code == 200
        # The call's 80-odd tokens are counted once it ended, off the request path: a moment later
        # the first key is over its TPM and the next calls go to the second.
        for _ in range(40):
            if fake.keys_used()[-1] == KEYS[1]:
                break
            time.sleep(0.05)
            ask(server, 1)
        ask(server, 2)
    used = fake.keys_used()
    assert used[0] == KEYS[0]
    switched = used.index(KEYS[1])
    assert set(used[switched:]) == {KEYS[1]}


def test_the_sdk_sees_a_rate_limit_error_when_the_deployment_is_limited(fake: FakeOpenAI) -> None:
    config = pool_config(fake, [{"api_key": KEYS[0], "rpm": 1}])
    with (
        GatewayServer(config) as server,
        openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0) as sdk,
    ):
        sdk.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_deployment_limited_is_a_429_with_retry_after() -> None:
    error = DeploymentLimited("gpt/0", 12.2)
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "deployment_rate_limited")
    assert error.headers == {"Retry-After": "13"}
    assert error.retry_after == 12.2
    assert json.loads(error.openai_body())["error"]["code"] == "deployment_rate_limited"


def test_credential_keys_take_environment_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOL_KEY_A", "sk-from-the-environment")
    config = parse_config(
        {
            "models": {
                "gpt": {
                    "deployments": [
                        {"provider": "openai", "credentials": [{"api_key": "${POOL_KEY_A}", "rpm": 5}]}
                    ]
                }
            }
        }
    )
    credential = config.models["gpt"].deployments[0].credentials[0]
    assert credential.api_key is not None
    assert credential.api_key.get_secret_value() == "sk-from-the-environment"
    assert "sk-from-the-environment" not in repr(config)


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        ([{"id": "a"}, {"id": "a"}], "two credentials have the same id"),
        ([{"rpm": 0}], "greater than 0"),
        ([{"options": {"organisation": "x"}}], "credentials[0].options: organisation: unknown key"),
    ],
)
def test_bad_credentials_fail_start_up(credentials: list[dict[str, Any]], message: str) -> None:
    data = {
        "models": {
            "gpt": {"deployments": [{"provider": "openai", "api_key": "sk-x", "credentials": credentials}]}
        }
    }
    with pytest.raises(ConfigError) as caught:
        Gateway(parse_config(data))
    assert message in str(caught.value)
    assert "models.gpt" in str(caught.value)


def test_a_credential_missing_its_required_key_fails_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    data = {
        "models": {
            "claude": {
                "deployments": [
                    {"provider": "anthropic", "credentials": [{"api_key": "sk-ant-x"}, {"id": "keyless"}]}
                ]
            }
        }
    }
    with pytest.raises(ConfigError, match=r"credentials\[1\]: provider 'anthropic' needs an API key"):
        Gateway(parse_config(data))


# --- shared by replicas through Redis ---------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set")
    return url


def test_replicas_share_the_limits_of_a_key(fake: FakeOpenAI, redis_url: str) -> None:
    config = pool_config(fake, [{"api_key": KEYS[0], "rpm": 3}])
    config["redis"] = {"url": redis_url}
    with GatewayServer(config) as first, GatewayServer(config) as second:
        answers = [*ask(first, 2), *ask(second, 1), *ask(second, 1), *ask(first, 1)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429, 429]
    assert len(fake.requests) == 3


# --- Vertex: a service account per credential ---------------------------------------------------------

PROJECT = "lockgate-test"
LOCATION = "us-east5"


@pytest.fixture(scope="module")
def oauth() -> Iterator[FakeGoogleOAuth]:
    with FakeGoogleOAuth() as server:
        yield server


@pytest.fixture(scope="module")
def vertex(oauth: FakeGoogleOAuth) -> Iterator[FakeVertex]:
    with (
        FakeGemini() as gemini,
        FakeAnthropic() as claude,
        FakeVertex(oauth, gemini, claude, project=PROJECT, location=LOCATION) as server,
    ):
        yield server


def test_each_vertex_credential_has_its_own_service_account_and_token(
    oauth: FakeGoogleOAuth, vertex: FakeVertex
) -> None:
    accounts = [
        make_service_account(oauth.token_uri, project_id=PROJECT, name=f"pool-{index}-{uuid.uuid4().hex[:6]}")
        for index in range(2)
    ]
    for account in accounts:
        oauth.trust(account)
    deployment = {
        "provider": "vertex",
        "base_url": vertex.url,
        "model": "gemini-2.5-flash",
        "options": {"location": LOCATION},
        "credentials": [{"options": {"credentials": json.dumps(account)}} for account in accounts],
    }
    exchanges = oauth.exchanges
    with GatewayServer({"models": {"gemini": {"deployments": [deployment]}}}) as server:
        body = {"model": "gemini", "messages": [{"role": "user", "content": "hi"}]}
        answers = ask(server, 4, body)
    assert [answer.status_code for answer in answers] == [200] * 4
    assert oauth.exchanges - exchanges == 2  # one token per account, each cached
    tokens = [
        r.headers["authorization"].removeprefix("Bearer ") for r in vertex.requests_to("generateContent")[-4:]
    ]
    assert tokens[0] == tokens[2] and tokens[1] == tokens[3] and tokens[0] != tokens[1]
    owners = {oauth.issued[token][0] for token in tokens}
    assert owners == {account["client_email"] for account in accounts}
