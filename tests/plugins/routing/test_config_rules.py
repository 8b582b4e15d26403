"""Routing rules of the configuration (``routing.rules``): globs and prefixes, in order, after the
database's rules."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_core import ConfigError, Gateway, parse_config
from gateway_core.store.database import Database
from gateway_core.store.migrate import upgrade
from gateway_core.store.models import RoutingRule
from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer


def models() -> dict[str, Any]:
    def replying(text: str) -> dict[str, Any]:
        return {"deployments": [{"provider": "mock", "options": {"reply": text}}]}

    return {"echo": replying("echo"), "fixed": replying("fixed"), "other": replying("other")}


def reply(server: GatewayServer, model: str) -> str | int:
    answer = httpx.post(
        f"{server.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {DEFAULT_TEST_KEY}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    if answer.status_code != 200:
        return answer.status_code
    content: str = answer.json()["choices"][0]["message"]["content"]
    return content


def test_rules_match_globs_and_prefixes_in_order() -> None:
    config = {
        "models": models(),
        "providers": {"mocked": {"provider": "mock", "models": ["*"], "options": {"reply": "by id"}}},
        "routing": {
            "rules": [
                {"prefix": "legacy*", "model": "fixed"},
                {"match": "gpt-*", "model": "echo"},
                {"match": "gpt-4*", "model": "other"},  # never reached: gpt-* comes first
                {"match": "claude-?", "model": "mocked/claude"},
                {"match": "o1", "model": "other"},
            ]
        },
    }
    with GatewayServer(config) as server:
        assert reply(server, "legacy*v2") == "fixed"
        assert reply(server, "legacy-v2") == 404  # a prefix is literal: its * is no wildcard
        assert reply(server, "gpt-4o") == "echo"
        assert reply(server, "claude-3") == "by id"
        assert reply(server, "claude-35") == 404
        assert reply(server, "o1") == "other"
        assert reply(server, "o1-mini") == 404  # a name without wildcards is exact
        assert reply(server, "fixed") == "fixed"  # names come first


def test_a_rule_naming_no_model_fails_start_up() -> None:
    data = {"models": models(), "routing": {"rules": [{"match": "gpt-*", "model": "missing"}]}}
    with pytest.raises(ConfigError, match=r"routing\.rules name models that do not exist: missing"):
        Gateway(parse_config(data))


@pytest.mark.parametrize(
    "rule",
    [{"model": "echo"}, {"match": "a", "prefix": "b", "model": "echo"}, {"match": "", "model": "echo"}],
)
def test_a_rule_needs_one_pattern(rule: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"routing\.rules\[0\]"):
        parse_config({"models": models(), "routing": {"rules": [rule]}})


async def add_rule(url: str, pattern: str, target: str) -> None:
    await upgrade(url)
    database = Database(url)
    await database.start()
    try:
        await database.run(RoutingRule.create(pattern=pattern, target=target, priority=10))
    finally:
        await database.stop()


def test_the_databases_rules_come_first(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'lockgate.db'}"
    asyncio.run(add_rule(url, "gpt-*", "fixed"))
    config = {
        "database": {"url": url},
        "models": models(),
        "routing": {"rules": [{"match": "gpt-*", "model": "echo"}, {"prefix": "o1", "model": "echo"}]},
    }
    with GatewayServer(config) as server:
        assert reply(server, "gpt-4o") == "fixed"
        assert reply(server, "o1-mini") == "echo"


def test_with_a_database_a_rule_may_wait_for_its_model(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'lockgate.db'}"
    asyncio.run(upgrade(url))
    config = {
        "database": {"url": url},
        "models": models(),
        "routing": {"rules": [{"match": "team-*", "model": "team-model"}]},
    }
    with GatewayServer(config) as server:
        assert reply(server, "team-a") == 404
