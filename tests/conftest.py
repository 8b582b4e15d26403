"""Shared fixtures: a fake OpenAI upstream and a gateway in front of it, both on 127.0.0.1.

Also the run's own settings: the Hypothesis profile (CI's is reproducible) and a summary of the
PostgreSQL and Redis variants skipped for want of their servers.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from hypothesis import settings

from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer
from tests import hypothesis_profiles
from tests.dlp_end_to_end import (  # noqa: F401 (the fixtures of the DLP tests)
    dlp_failing_gateway,
    dlp_gateway,
    dlp_recorder,
    dlp_test,
    dlp_upstreams,
)
from tests.fakes import FakeOpenAI
from tests.one_call import one_call
from tests.services import DEFAULTS, not_set

settings.load_profile(hypothesis_profiles.selected(os.environ))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say loudly how many tests were skipped because a service variable is unset."""
    skipped: dict[str, int] = dict.fromkeys(DEFAULTS, 0)
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        for variable in skipped:
            skipped[variable] += reason.endswith(not_set(variable))
    if not any(skipped.values()):
        return
    terminalreporter.write_sep("=", "PostgreSQL and Redis variants skipped", yellow=True, bold=True)
    for variable, count in skipped.items():
        if count:
            terminalreporter.write_line(
                f"{count} skipped because {not_set(variable)}: export {variable}={DEFAULTS[variable]}",
                yellow=True,
                bold=True,
            )
    terminalreporter.write_line("`make test` sets both and runs everything.", yellow=True, bold=True)


#: A second gateway key that may only use the mock models.
MOCK_ONLY_KEY = "lg-mock-only-key-0123456789abcdef"


def gateway_config(fake: FakeOpenAI, refused_port: int) -> dict[str, Any]:
    """Models on the fake upstream (named for what they exercise) and on the mock provider."""

    def upstream(**extra: Any) -> dict[str, Any]:
        return {
            "deployments": [
                {"provider": "openai", "base_url": fake.base_url, "api_key": fake.api_key, **extra}
            ]
        }

    return {
        "server": {"max_body_bytes": 16 * 1024, "graceful_timeout": 2},
        "models": {
            "gpt-4o-mini": upstream(),
            "text-embedding-3-small": upstream(),
            "my-gpt": upstream(model="gpt-4o-mini"),
            "gpt-slow": upstream(model="gpt-4o-mini", timeout={"read": 0.5}),
            "gpt-misconfigured": upstream(model="gpt-4o-mini", api_key="sk-wrong-upstream-key-9d8c7b6a5f4e"),
            "gpt-unreachable": upstream(model="gpt-4o-mini", base_url=f"http://127.0.0.1:{refused_port}/v1"),
            "mock-echo": {
                "aliases": ["mock"],
                "deployments": [{"provider": "mock", "options": {"chunks": 5}}],
            },
            "mock-embedding": {"deployments": [{"provider": "mock", "options": {"embedding_dimensions": 8}}]},
        },
        "plugins": {
            "config_keys": {
                "keys": [
                    {"name": "test", "key": DEFAULT_TEST_KEY},
                    {"name": "mock-only", "key": MOCK_ONLY_KEY, "models": ["mock-*"]},
                ]
            }
        },
    }


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(fake_upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The fake OpenAI upstream, answering normally and with nothing recorded at the test's start."""
    fake_upstream.reset()
    yield fake_upstream
    fake_upstream.reset()


@pytest.fixture(scope="session")
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound (so nothing else takes it), never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="session")
def gateway(fake_upstream: FakeOpenAI, refused_port: int) -> Iterator[GatewayServer]:
    with GatewayServer(one_call(gateway_config(fake_upstream, refused_port))) as server:
        yield server


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    """The sync ``openai`` SDK client on the gateway, without retries."""
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0, timeout=10) as sdk:
        yield sdk


@pytest.fixture
async def async_client(gateway: GatewayServer) -> AsyncIterator[openai.AsyncOpenAI]:
    """The async ``openai`` SDK client on the gateway, without retries."""
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0, timeout=10
    ) as sdk:
        yield sdk


@pytest.fixture
def mock_only_key() -> str:
    """A gateway key that may use only the ``mock-*`` models."""
    return MOCK_ONLY_KEY
