"""``provider/model`` ids: a named provider of the ``providers`` section serves the models its globs allow."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway_core import ConfigError, Gateway, parse_config
from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer
from tests.fakes import FakeOpenAI

#: A key that may use one provider id only.
NARROW_KEY = "lg-narrow-key-0123456789abcdef"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    upstream.reset()
    yield upstream
    upstream.reset()


@pytest.fixture(scope="module")
def server(upstream: FakeOpenAI) -> Iterator[GatewayServer]:
    config = {
        "providers": {
            "fakeai": {
                "provider": "openai",
                "base_url": upstream.base_url,
                "api_key": upstream.api_key,
                "models": ["gpt-4o*", "openai/*"],
            },
        },
        "models": {"mock-echo": {"deployments": [{"provider": "mock"}]}},
        "plugins": {
            "config_keys": {
                "keys": [
                    {"name": "test", "key": DEFAULT_TEST_KEY},
                    {"name": "narrow", "key": NARROW_KEY, "models": ["fakeai/gpt-4o-mini"]},
                ]
            }
        },
    }
    with GatewayServer(config) as gateway:
        yield gateway


def chat(server: GatewayServer, model: str, key: str = DEFAULT_TEST_KEY) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hello"}]},
        timeout=10,
    )


def test_a_provider_id_routes_to_that_provider_with_the_rest_as_the_model(
    server: GatewayServer, fake: FakeOpenAI
) -> None:
    answer = chat(server, "fakeai/gpt-4o-mini")
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Echo: hello"
    assert answer.headers["x-lockgate-deployment"] == "fakeai/gpt-4o-mini"
    assert fake.requests[-1].json["model"] == "gpt-4o-mini"


def test_the_upstream_model_may_hold_slashes(server: GatewayServer, fake: FakeOpenAI) -> None:
    chat(server, "fakeai/openai/gpt-4o")
    assert fake.requests[-1].json["model"] == "openai/gpt-4o"


def test_ids_outside_the_globs_are_refused(server: GatewayServer, fake: FakeOpenAI) -> None:
    for model in ("fakeai/o1-mini", "nowhere/gpt-4o", "fakeai/", "fakeai"):
        answer = chat(server, model)
        assert answer.status_code == 404, model
        assert answer.json()["error"]["code"] == "model_not_found"
    assert fake.requests == []


def test_the_keys_model_allowlist_applies(server: GatewayServer, fake: FakeOpenAI) -> None:
    assert chat(server, "fakeai/gpt-4o-mini", NARROW_KEY).status_code == 200
    refused = chat(server, "fakeai/gpt-4o", NARROW_KEY)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert len(fake.requests) == 1


def test_the_group_is_built_once_and_kept(server: GatewayServer, fake: FakeOpenAI) -> None:
    for _ in range(3):
        assert chat(server, "fakeai/gpt-4o").status_code == 200
    groups = [group for group in server.gateway.provider_routes.groups() if group.name == "fakeai/gpt-4o"]
    assert len(groups) == 1
    assert groups[0].deployments[0].in_flight == 0


def test_streams_through_a_provider_id(server: GatewayServer, fake: FakeOpenAI) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key=DEFAULT_TEST_KEY, max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model="fakeai/gpt-4o", messages=[{"role": "user", "content": "streamed"}], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Echo: streamed"


def test_the_cache_is_bounded() -> None:
    config = {
        "providers": {"mocked": {"provider": "mock", "models": ["*"]}},
        "models": {"mock-echo": {"deployments": [{"provider": "mock"}]}},
    }
    gateway = Gateway(parse_config(config))
    routes = gateway.provider_routes
    routes.CACHE_SIZE = 4
    first = routes.match("mocked/m0")
    for index in range(1, 8):
        assert routes.match(f"mocked/m{index}") is not None
    assert len(routes.groups()) == 4
    assert routes.match("mocked/m7") is routes.match("mocked/m7")
    assert routes.match("mocked/m0") is not first  # evicted, then built again


def section(**extra: Any) -> dict[str, Any]:
    return {"providers": {"p": {"provider": "mock", "models": ["*"], **extra}}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"providers": {"p": {"provider": "nope", "models": ["*"]}}}, "providers.p.provider"),
        (section(model="fixed"), "the requested id names the upstream model"),
        (section(models=[]), "providers.p.models"),
        ({"providers": {"a/b": {"provider": "mock", "models": ["*"]}}}, "cannot contain '/'"),
        (section(options={"bogus": 1}), "providers.p.options.bogus"),
    ],
)
def test_bad_provider_sections_fail_start_up(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Gateway(parse_config(data))
    assert message in str(caught.value)


def test_the_provider_defaults_to_the_sections_name() -> None:
    config = parse_config({"providers": {"mock": {"models": ["*"]}}})
    assert config.providers["mock"].provider == "mock"


def test_an_optional_section_with_an_unset_key_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCKGATE_TEST_UNSET_KEY", raising=False)
    config = parse_config(
        {
            "providers": {
                "openrouter": {"api_key": "${LOCKGATE_TEST_UNSET_KEY}", "optional": True, "models": ["*"]},
                "mock": {"models": ["*"]},
            }
        }
    )
    assert list(config.providers) == ["mock"]
