"""One gateway for all hostile-input tests, in front of fake OpenAI and Anthropic upstreams."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.hostile.servers import Upstreams, hostile_config


@pytest.fixture(scope="package")
def upstreams() -> Iterator[Upstreams]:
    with FakeOpenAI() as openai_fake, FakeAnthropic() as anthropic_fake:
        yield openai_fake, anthropic_fake


@pytest.fixture(scope="package")
def gateway(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    database = tmp_path_factory.mktemp("hostile") / "lockgate.db"
    with GatewayServer(hostile_config(upstreams, database)) as server:
        yield server


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:
    """An HTTP client with the gateway's key in both dialects' headers."""
    headers = {
        "Authorization": f"Bearer {gateway.api_key}",
        "x-api-key": gateway.api_key,
        "anthropic-version": "2023-06-01",
    }
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as http:
        yield http
