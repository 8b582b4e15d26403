"""The gateway the hostile-input tests attack: models on fake upstreams, and the admin API on SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.fakes import FakeOpenAI
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.one_call import one_call
from tests.raw_http import RawResponse

#: Short deadlines, so that a test waits for them a second at most.
HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5
BODY_MIN_RATE = 20_000
#: How much later than its deadline a cut-off may come on a loaded machine.
SLACK = 1.5

HELLO = [{"role": "user", "content": "hello"}]

Upstreams = tuple[FakeOpenAI, FakeAnthropic]


def hostile_config(upstreams: Upstreams, database: Path, **server: Any) -> dict[str, Any]:
    """A gateway on a new SQLite database at ``database``, with ``server`` settings added."""
    from gateway_core.store.migrate import upgrade

    openai_fake, anthropic_fake = upstreams
    openai_upstream = {"provider": "openai", "base_url": openai_fake.base_url, "api_key": openai_fake.api_key}
    url = f"sqlite://{database}"
    asyncio.run(upgrade(url))
    return one_call(
        {
            "server": {
                "header_timeout": HEADER_TIMEOUT,
                "body_timeout": BODY_TIMEOUT,
                "body_min_rate": BODY_MIN_RATE,
                "graceful_timeout": 2,
                **server,
            },
            "database": {"url": url},
            "admin": {"jwt_secret": "hostile-input-tests-jwt-secret-0123456789"},
            "models": {
                # The client's names are not the upstream's: the gateway writes the body anew.
                "my-gpt": {"deployments": [{**openai_upstream, "model": "gpt-4o-mini"}]},
                "my-embedding": {"deployments": [{**openai_upstream, "model": "text-embedding-3-small"}]},
                "claude": {
                    "deployments": [
                        {
                            "provider": "anthropic",
                            "base_url": anthropic_fake.url,
                            "api_key": anthropic_fake.api_key,
                            "model": "claude-3-5-haiku-latest",
                        }
                    ]
                },
            },
        }
    )


def error_of(path: str, response: httpx.Response | RawResponse) -> dict[str, Any]:
    """The error object of an answer, after checking it has the shape of the route's dialect."""
    body = response.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}
    else:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error
