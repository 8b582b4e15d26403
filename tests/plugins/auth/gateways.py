"""Helpers of the database auth tests: a gateway configuration with a database, and calls to it."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import openai
import pytest

from gateway_core import DlpFilter, Finding, RequestContext, hookimpl
from gateway_core.store.keys import KEYS_CHANNEL
from gateway_core.testing import GatewayServer

HELLO: list[Any] = [{"role": "user", "content": "Hello"}]


def gateway_config(database_url: str, *, redis_url: str | None = None, **options: Any) -> dict[str, Any]:
    """Two mock models, the database, and ``options`` for the api_keys plugin."""
    config: dict[str, Any] = {
        "server": {"graceful_timeout": 2},
        "database": {"url": database_url},
        "models": {
            "mock-echo": {"deployments": [{"provider": "mock"}]},
            "gpt-4o": {"deployments": [{"provider": "mock"}]},
        },
        "plugins": {"api_keys": options},
    }
    if redis_url is not None:
        config["redis"] = {"url": redis_url}
    return config


class EmailFilter(DlpFilter):
    """A DLP filter for the tests: finds e-mail addresses."""

    name = "emails"
    entity_types = frozenset({"EMAIL_ADDRESS"})
    _EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")

    def find(self, text: str, entity_types: frozenset[str]) -> Iterable[Finding]:
        return [Finding("EMAIL_ADDRESS", m.start(), m.end()) for m in self._EMAIL.finditer(text)]


class PhoneFilter(DlpFilter):
    """A DLP filter for the tests: finds runs of ten digits."""

    name = "phones"
    entity_types = frozenset({"PHONE_NUMBER"})

    def find(self, text: str, entity_types: frozenset[str]) -> Iterable[Finding]:
        return [Finding("PHONE_NUMBER", m.start(), m.end()) for m in re.finditer(r"\d{10}", text)]


#: The ``dlp`` section of the tests' configurations: both test filters (see :class:`DlpSpy`).
DLP_SECTION: dict[str, Any] = {"filters": {"emails": {}, "phones": {}}}


class DlpSpy:
    """Registers the tests' DLP filters, and keeps the principal of every request it sees."""

    def __init__(self) -> None:
        self.principals: list[Any] = []

    @hookimpl
    def lockgate_register_dlp_filters(self, register: Callable[[str, type[DlpFilter]], None]) -> None:
        register("emails", EmailFilter)
        register("phones", PhoneFilter)

    @hookimpl
    def lockgate_policy_check(self, ctx: RequestContext) -> None:
        self.principals.append(ctx.principal)


def chat(server: GatewayServer, key: str, model: str = "mock-echo") -> str:
    with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=10) as sdk:
        completion = sdk.chat.completions.create(model=model, messages=HELLO)
    content = completion.choices[0].message.content
    assert content
    return content


def refused(server: GatewayServer, key: str, model: str = "mock-echo") -> tuple[int, str]:
    """Status and message of a request the gateway refuses."""
    with pytest.raises(openai.APIStatusError) as caught:
        chat(server, key, model)
    error = caught.value
    return error.status_code, error.response.json()["error"]["message"]


def wait_until(condition: Callable[[], bool], seconds: float, step: float = 0.02) -> float:
    """Poll ``condition`` until it holds; return the seconds it took (fails after ``seconds``)."""
    start = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - start
        assert elapsed < seconds, f"not true after {seconds} s"
        time.sleep(step)
    return time.monotonic() - start


def is_refused(server: GatewayServer, key: str) -> bool:
    try:
        chat(server, key)
    except openai.AuthenticationError:
        return True
    return False


def wait_until_listening(receiver: GatewayServer, *senders: GatewayServer) -> None:
    """Wait until ``receiver`` gets key events through Redis (published by ``senders``).

    A gateway subscribes to ``lockgate:keys`` in its start-up hook, a moment after its events bus
    connected: a message published before that moment is not delivered (Redis pub/sub keeps nothing).
    """
    cache = receiver.gateway.plugin_state["api_keys"]

    def heard() -> bool:
        before = cache.generation
        for sender in senders:
            assert sender._loop is not None
            publish = sender.gateway.events.publish(KEYS_CHANNEL, {"key_id": "no-such-key"})
            asyncio.run_coroutine_threadsafe(publish, sender._loop).result(5)
        time.sleep(0.05)
        return bool(cache.generation > before)

    wait_until(heard, seconds=10)
