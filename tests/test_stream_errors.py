"""Broken upstream streams are errors in every dialect, with the official SDKs as clients.

Each upstream (OpenAI and Azure OpenAI on the same-dialect fast path, Anthropic natively and by
translation, Gemini by translation) sends a stream with one event cut in the middle, or ends the connection in the middle of
an event. Whatever the client's dialect, its SDK must raise an API error (not a parse crash, not a
silent success) after the events that came before; the usage record says 502 with the error, and the
deployment's health counts a failure.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway_core.store.migrate import upgrade
from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.azure_upstream import FakeAzureOpenAI
from tests.fakes.gemini_upstream import FakeGemini
from tests.one_call import one_call

CLAUDE = "claude-sonnet-4-5"

#: Model names at the gateway, each served by its own upstream fake.
UPSTREAMS = ("gpt-4o-mini", "azure", "claude", "gemini")
#: The index of the event each fake sends broken: some events of the answer reach the client first.
BROKEN_AT = {"gpt-4o-mini": 2, "azure": 3, "claude": 3, "gemini": 1}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Any]]:
    with FakeOpenAI() as gpt, FakeAzureOpenAI() as azure, FakeAnthropic() as claude, FakeGemini() as gemini:
        yield {"gpt-4o-mini": gpt, "azure": azure, "claude": claude, "gemini": gemini}


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream-errors") / "lockgate.db"
    asyncio.run(upgrade(f"sqlite://{path}"))
    return path


@pytest.fixture(scope="module")
def gateway(fakes: dict[str, Any], database: Path) -> Iterator[GatewayServer]:
    gpt, azure, claude, gemini = fakes["gpt-4o-mini"], fakes["azure"], fakes["claude"], fakes["gemini"]

    def deployment(**entry: Any) -> dict[str, Any]:
        return {"deployments": [entry]}

    config = {
        "database": {"url": f"sqlite://{database}"},
        "usage": {"flush_seconds": 0.05},
        "models": {
            "gpt-4o-mini": deployment(provider="openai", base_url=gpt.base_url, api_key=gpt.api_key),
            "azure": deployment(
                provider="azure_openai",
                base_url=azure.url,
                api_key=azure.api_key,
                model="chat-4o",
                options={"api_version": "2024-10-21"},
            ),
            "claude": deployment(
                provider="anthropic", base_url=claude.url, api_key=claude.api_key, model=CLAUDE
            ),
            "gemini": deployment(
                provider="gemini", base_url=gemini.url, api_key=gemini.api_key, model="gemini-2.5-flash"
            ),
        },
    }
    with GatewayServer(one_call(config)) as server:
        yield server


@pytest.fixture
def upstreams(fakes: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for fake in fakes.values():
        fake.reset()
    yield fakes
    for fake in fakes.values():
        fake.reset()


def break_stream(fake: Any, model: str, *, truncated: bool) -> None:
    """Cut one event of ``fake``'s next streams; ``truncated``: and end the body right after it
    (the Azure fake can only reset the connection, which ends mid-event too)."""
    index = BROKEN_AT[model]
    if truncated and model == "azure":
        fake.behave(chunks=4, broken_event=index, die_after=index + 1)
    elif truncated:
        fake.behave(chunks=4, broken_event=index, die_after=index + 1, abrupt=False)
    else:
        fake.behave(chunks=4, broken_event=index)


def record_of(database: Path, request_id: str, timeout: float = 5.0) -> tuple[int, str | None]:
    """``(status, error_type)`` of the request's usage record, once the writer stored it."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(database) as db:
            row = db.execute(
                "SELECT status, error_type FROM usage_records WHERE request_id = ?", (request_id,)
            ).fetchone()
        if row is not None:
            return int(row[0]), row[1]
        if time.monotonic() > deadline:
            raise AssertionError(f"no usage record for {request_id} within {timeout} s")
        time.sleep(0.02)


def failures_of(gateway: GatewayServer, model: str) -> int:
    health = {entry["model_name"]: entry for entry in gateway.gateway.health.snapshot()}
    return int(health[model]["failures"])


@pytest.mark.parametrize("truncated", [False, True], ids=["malformed-event", "ends-mid-event"])
@pytest.mark.parametrize("model", UPSTREAMS)
def test_the_openai_sdk_raises_an_api_error_for_a_broken_upstream_stream(
    gateway: GatewayServer, upstreams: dict[str, Any], database: Path, model: str, truncated: bool
) -> None:
    break_stream(upstreams[model], model, truncated=truncated)
    failures = failures_of(gateway, model)
    received = []
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "tell me a story"}], stream=True
        )
        request_id = raw.headers["x-request-id"]
        with pytest.raises(openai.APIError) as caught:
            received.extend(raw.parse())

    assert received, "the events before the broken one reach the client"
    assert not isinstance(caught.value, openai.APIConnectionError)
    assert caught.value.code in ("upstream_malformed_event", "upstream_error")
    assert record_of(database, request_id) == (502, "server_error")
    assert failures_of(gateway, model) == failures + 1


@pytest.mark.parametrize("truncated", [False, True], ids=["malformed-event", "ends-mid-event"])
@pytest.mark.parametrize("model", UPSTREAMS)
def test_the_anthropic_sdk_raises_an_api_error_for_a_broken_upstream_stream(
    gateway: GatewayServer, upstreams: dict[str, Any], database: Path, model: str, truncated: bool
) -> None:
    break_stream(upstreams[model], model, truncated=truncated)
    failures = failures_of(gateway, model)
    events = []
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.api_key, max_retries=0) as client:
        raw = client.messages.with_raw_response.create(
            model=model,
            max_tokens=100,
            messages=[{"role": "user", "content": "tell me a story"}],
            stream=True,
        )
        request_id = raw.headers["x-request-id"]
        with pytest.raises(anthropic.APIStatusError) as caught:
            events.extend(raw.parse())

    assert [event.type for event in events][:1] == ["message_start"]
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "api_error"
    assert record_of(database, request_id) == (502, "server_error")
    assert failures_of(gateway, model) == failures + 1


def test_an_unbroken_stream_is_still_a_success(
    gateway: GatewayServer, upstreams: dict[str, Any], database: Path
) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = list(raw.parse())
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert record_of(database, raw.headers["x-request-id"]) == (200, None)


def test_a_stream_broken_at_its_first_event_is_answered_502_before_anything_is_sent(
    gateway: GatewayServer, upstreams: dict[str, Any], database: Path
) -> None:
    upstreams["gpt-4o-mini"].behave(broken_event=0)
    with (
        openai.OpenAI(base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0) as client,
        pytest.raises(openai.InternalServerError) as caught,
    ):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )

    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_malformed_event"
    assert record_of(database, caught.value.response.headers["x-request-id"]) == (502, "server_error")
