"""Budget counters are rebuilt from the usage records when Redis lost them (restarted without
persistence), so a month budget still refuses at its limit; replicas rebuilding at once count once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway_core.limits import Period, Window
from gateway_core.testing import GatewayServer
from tests.gateway_core.conftest import postgres_url  # noqa: F401 (a fixture)
from tests.plugins.policies.conftest import in_thread, settled, used
from tests.plugins.policies.redis_server import RedisServer
from tests.plugins.policies.test_budgets import HELLO, PRICED

#: Ten calls' worth.
MONTH_BUDGET = "0.05"
COST_MONTH = Window("cost:month", 50_000_000, Period.MONTH)


@pytest.fixture(params=["sqlite", "postgres"])
def usage_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database of each dialect for the usage records (PostgreSQL's is the session's:
    every test's key is its own, so records of other tests do not count)."""
    if request.param == "sqlite":
        from gateway_core.store.migrate import upgrade

        url = f"sqlite://{tmp_path / 'lockgate.db'}"
        in_thread(lambda: upgrade(url))
        return url
    postgres: str = request.getfixturevalue("postgres_url")
    return postgres


def gateway_config(
    redis: RedisServer, database_url: str, name: str, key: str, tmp_path: Path
) -> dict[str, Any]:
    return {
        "server": {"graceful_timeout": 2},
        "database": {"url": database_url},
        "redis": {"url": redis.url, "timeout": 1},
        "usage": {"flush_seconds": 0.05, "spool_dir": str(tmp_path / f"spool-{uuid.uuid4().hex[:6]}")},
        "models": {"priced": PRICED},
        "plugins": {
            "config_keys": {"keys": [{"name": name, "key": key}]},
            "budgets": {"defaults": {"key": {"cost": {"month": MONTH_BUDGET}}}},
        },
    }


def call(server: GatewayServer, key: str) -> int:
    """One chat call; its status."""
    with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=10) as client:
        try:
            client.chat.completions.create(model="priced", messages=HELLO, max_tokens=5)
        except openai.APIStatusError as error:
            return error.status_code
    return 200


def stored(server: GatewayServer, count: int, seconds: float = 10.0) -> None:
    """Wait until the gateway's usage log wrote at least ``count`` records to the database."""
    usage_log = server.gateway.usage_log
    assert usage_log is not None
    deadline = time.monotonic() + seconds
    while usage_log.counters.written < count:
        assert time.monotonic() < deadline, f"only {usage_log.counters.written} of {count} records stored"
        time.sleep(0.02)


def restart_empty(redis: RedisServer) -> None:
    """Kill the redis-server and start it again on the same port, with nothing in it."""
    redis.kill()
    redis.start()


def test_a_month_budget_holds_after_redis_restarts_empty(
    own_redis: RedisServer, serve: Callable[..., GatewayServer], usage_database: str, tmp_path: Path
) -> None:
    name, key = f"month-{uuid.uuid4().hex[:8]}", f"lg-{uuid.uuid4().hex}"
    server = serve(gateway_config(own_redis, usage_database, name, key, tmp_path))
    assert [call(server, key) for _ in range(6)] == [200] * 6  # $0.03 of $0.05
    stored(server, 6)
    restart_empty(own_redis)
    statuses = [call(server, key) for _ in range(8)]
    assert statuses == [200] * 4 + [429] * 4  # $0.02 left: four calls, not ten more
    settled(server)
    assert used(server, f"bq:key:config_keys:{name}", COST_MONTH) == 50_000_000
    assert server.gateway.plugin_state["budgets"].rebuilds.seeded >= 1


def test_replicas_rebuilding_at_once_count_the_records_once(
    own_redis: RedisServer, serve: Callable[..., GatewayServer], usage_database: str, tmp_path: Path
) -> None:
    name, key = f"replicas-{uuid.uuid4().hex[:8]}", f"lg-{uuid.uuid4().hex}"
    first = serve(gateway_config(own_redis, usage_database, name, key, tmp_path))
    second = serve(gateway_config(own_redis, usage_database, name, key, tmp_path))
    assert [call(first, key) for _ in range(3)] + [call(second, key) for _ in range(3)] == [200] * 6
    stored(first, 3)
    stored(second, 3)
    restart_empty(own_redis)
    # Both replicas find the counter gone at once; each rebuilds it, one of them seeds it.
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda server: call(server, key), [first, second, first, second]))
    assert statuses == [200] * 4
    settled(first)
    settled(second)
    # Six calls before, four after: $0.05, counted once (a double rebuild would show $0.08).
    assert used(first, f"bq:key:config_keys:{name}", COST_MONTH) == 50_000_000
    assert {call(first, key), call(second, key)} == {429}


def test_a_rebuild_refuses_while_the_database_cannot_answer(
    own_redis: RedisServer, serve: Callable[..., GatewayServer], tmp_path: Path
) -> None:
    from gateway_core.store.migrate import upgrade

    name, key = f"nodb-{uuid.uuid4().hex[:8]}", f"lg-{uuid.uuid4().hex}"
    database = tmp_path / "gone.db"
    url = f"sqlite://{database}"
    in_thread(lambda: upgrade(url))
    server = serve(gateway_config(own_redis, url, name, key, tmp_path))
    assert call(server, key) == 200
    stored(server, 1)

    async def drop_table() -> None:
        await asyncio.to_thread(_drop_usage_table, database)

    in_thread(drop_table)
    restart_empty(own_redis)
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=10)
    with client, pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="priced", messages=HELLO, max_tokens=5)
    assert refused.value.status_code == 503
    assert refused.value.response.json()["error"]["code"] == "budgets_unavailable"


def _drop_usage_table(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE usage_records RENAME TO usage_records_gone")


def test_a_budget_in_memory_holds_across_a_gateway_restart(
    serve: Callable[..., GatewayServer], tmp_path: Path
) -> None:
    from gateway_core.store.migrate import upgrade

    name, key = f"embedded-{uuid.uuid4().hex[:8]}", f"lg-{uuid.uuid4().hex}"
    url = f"sqlite://{tmp_path / 'embedded.db'}"
    in_thread(lambda: upgrade(url))
    redis = RedisServer()  # never started: the configuration below has no Redis
    data = gateway_config(redis, url, name, key, tmp_path)
    del data["redis"]
    first = serve(data)
    assert [call(first, key) for _ in range(6)] == [200] * 6
    first.stop()  # the usage log is flushed at shutdown
    second = serve(data)
    assert [call(second, key) for _ in range(6)] == [200] * 4 + [429] * 2
