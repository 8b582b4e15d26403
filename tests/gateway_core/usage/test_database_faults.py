"""The usage log against a PostgreSQL that hangs, refuses, flaps or moves: writes are bounded in time, no
transaction outlives its batch, ``written`` counts committed rows only, and every record ends up stored
once (through a relay, ``tests/gateway_core/store/postgres_relay.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from gateway_core.config import UsageConfig
from gateway_core.store import database as database_module
from gateway_core.store.database import Database, DatabaseUnavailable
from gateway_core.store.models import UsageRecord, UsageRollup
from gateway_core.testing import GatewayServer
from gateway_core.usage.log import UsageLog
from tests.gateway_core.conftest import started_database
from tests.gateway_core.store.postgres_relay import PostgresRelay
from tests.gateway_core.usage.conftest import USAGE_TABLES
from tests.gateway_core.usage.factories import request_context, until

#: Seconds of the client's and the server's bounds in these tests (the defaults are longer).
LIMIT = 1.5


@pytest.fixture
async def direct(postgres_url: str) -> AsyncIterator[Database]:
    """The test database, reached directly, with empty usage tables: another replica, and the judge."""
    async with started_database(postgres_url, USAGE_TABLES) as database:
        yield database


@pytest.fixture
async def relay(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PostgresRelay]:
    monkeypatch.setattr(database_module, "PROBE_SECONDS", 0.1)
    relay = PostgresRelay(postgres_url)
    await relay.start()
    yield relay
    await relay.stop()


def relayed(relay: PostgresRelay) -> Database:
    return Database(
        relay.url, connect_timeout=LIMIT, command_timeout=LIMIT, write_timeout=LIMIT, pool_min=1, pool_max=2
    )


def usage_log(database: Database, spool_dir: Path) -> UsageLog:
    return UsageLog(database, UsageConfig(batch_size=50, flush_seconds=0.05), spool_dir, stop_timeout=5)


async def rows(database: Database) -> int:
    return await database.run(UsageRecord.all().count())


async def idle_in_transaction(database: Database, name: str) -> int:
    """Sessions of the test database left idle inside a transaction."""
    found = await database.connection().execute_query_dict(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'",
        [name],
    )
    return int(found[0]["n"])


async def until_true(check: Callable[[], Awaitable[bool]], seconds: float = 15.0) -> None:
    """Wait until ``await check()`` answers True, for ``seconds`` at most."""
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition did not hold in time")


@pytest.mark.parametrize("statement", [b"BEGIN", b"COMMIT"])
async def test_a_hung_database_never_leaves_a_transaction_open_nor_loses_a_record(
    statement: bytes, relay: PostgresRelay, direct: Database, postgres_url: str, tmp_path: Path
) -> None:
    """The network goes silent as a batch begins or commits: the write gives up within its bound, the
    database shows unavailable, the batch is spooled and replayed once the network is back; the other
    replica is not blocked by the locks of the hung session, and ``written`` counts committed rows."""
    name = urlsplit(postgres_url).path.lstrip("/")
    database = relayed(relay)
    await database.start()
    hung_log = usage_log(database, tmp_path / "hung")
    other_log = usage_log(direct, tmp_path / "other")
    await hung_log.start()
    await other_log.start()
    try:
        for index in range(20):  # every record of this test adds to the same rollup rows
            hung_log.record(request_context(f"before-{index}"))
        await hung_log.flush()
        assert hung_log.counters.written == 20

        relay.hang_on(statement)
        for index in range(10):
            hung_log.record(request_context(f"hung-{index}"))
        await until(lambda: relay.mode == "hang")
        for index in range(10):  # the other replica writes the same rollup rows meanwhile
            other_log.record(request_context(f"other-{index}"))
        await until(lambda: other_log.counters.written == 10, seconds=4 * LIMIT)

        await until(lambda: hung_log.counters.spooled == 10, seconds=4 * LIMIT)
        assert not database.healthy  # /ready: "database": "unavailable", "status": "degraded"
        assert hung_log.counters.written == 20  # the batch whose commit never came is not counted
        for index in range(10):  # traffic goes on during the hang
            hung_log.record(request_context(f"during-{index}"))
        await until(lambda: hung_log.counters.spooled == 20, seconds=4 * LIMIT)

        await relay.restore()
        await until(lambda: hung_log.counters.replayed == 20)
        for index in range(10):  # and the writer writes again
            hung_log.record(request_context(f"after-{index}"))
        await until(lambda: hung_log.counters.written == 30)

        assert await rows(direct) == 60
        counted = hung_log.counters.written + hung_log.counters.replayed + other_log.counters.written
        assert counted == 60
        assert sum(row.requests for row in await direct.run(UsageRollup.all())) == 60
        assert hung_log.counters.dropped == 0
        await until_true(lambda: _none_idle(direct, name))
    finally:
        await hung_log.stop()
        await other_log.stop()
        await database.stop()


async def _none_idle(database: Database, name: str) -> bool:
    return await idle_in_transaction(database, name) == 0


async def test_a_write_that_runs_out_of_time_marks_the_database_unavailable(
    relay: PostgresRelay, direct: Database
) -> None:
    database = relayed(relay)
    await database.start()
    try:
        relay.hang()

        async def work(connection: object) -> int:
            return await UsageRecord.all().count()

        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DatabaseUnavailable):
            await database.write(work)
        assert loop.time() - started < 3 * LIMIT
        assert not database.healthy
    finally:
        await relay.restore()
        await database.stop()


async def test_recovery_survives_outages_that_come_back_while_it_runs(
    relay: PostgresRelay, direct: Database, tmp_path: Path
) -> None:
    """The database comes back, and goes away again (refused, then hung) while its recovery callbacks
    run, twice: it is probed again each time, and the third recovery replays the spool."""
    database = relayed(relay)
    recoveries = 0

    async def reload_meets_an_outage() -> None:  # as the gateway's model reload, a recovery callback
        nonlocal recoveries
        recoveries += 1
        if recoveries == 1:
            await relay.refuse()
        elif recoveries == 2:
            relay.hang()
        else:
            return
        await database.run(UsageRecord.all().count())  # finds the database gone again

    database.on_recover(reload_meets_an_outage)
    await database.start()
    log = usage_log(database, tmp_path / "spool")
    await log.start()
    try:
        await relay.refuse()
        for index in range(10):
            log.record(request_context(f"during-{index}"))
        await until(lambda: log.counters.spooled == 10)
        assert not database.healthy
        for outage in range(1, 4):
            await relay.restore()
            await until(lambda seen=outage: recoveries == seen, seconds=4 * LIMIT)
        await until(lambda: database.healthy and log.counters.replayed == 10)
        assert await rows(direct) == 10
        assert log.status()["spool_files"] == 0
    finally:
        await log.stop()
        await database.stop()


async def test_a_spool_is_replayed_after_the_database_url_changed(
    relay: PostgresRelay, direct: Database, postgres_url: str, tmp_path: Path
) -> None:
    """Records spooled while the database was refused at one address are replayed by the next start
    under another address (a new host or port for the same database), and stored once."""
    spool_dir = tmp_path / "spool"
    database = relayed(relay)
    await database.start()
    log = usage_log(database, spool_dir)
    await log.start()
    try:
        await relay.refuse()
        for index in range(12):
            log.record(request_context(f"moved-{index}"))
        await until(lambda: log.counters.spooled == 12)
    finally:
        await log.stop()
        await database.stop()

    moved = PostgresRelay(postgres_url)  # the same database at another port
    await moved.start()
    assert moved.url != relay.url
    database = relayed(moved)
    await database.start()
    log = usage_log(database, spool_dir)
    await log.start()  # replays the spool at start-up
    try:
        await until(lambda: log.counters.replayed == 12)
        assert await rows(direct) == 12
        assert log.status()["spool_files"] == 0
        assert await log.replay() == 0  # nothing left, nothing twice
        assert await rows(direct) == 12
    finally:
        await log.stop()
        await database.stop()
        await moved.stop()


async def test_through_the_gateway_a_hung_database_shows_in_ready_and_loses_no_record(
    relay: PostgresRelay, direct: Database, tmp_path: Path
) -> None:
    """Clients are answered while the database hangs as a batch begins; ``/ready`` says degraded, then
    ready, every request has its record once the network is back, and the writer writes again."""
    config = {
        "database": {
            "url": relay.url,
            "connect_timeout": LIMIT,
            "command_timeout": LIMIT,
            "write_timeout": LIMIT,
            "pool_max": 2,
        },
        "usage": {"batch_size": 20, "flush_seconds": 0.05, "spool_dir": str(tmp_path / "spool")},
        "models": {"mock-echo": {"deployments": [{"provider": "mock"}]}},
    }
    server = GatewayServer(config)
    await asyncio.to_thread(server.start)  # the relay serves from this loop meanwhile
    sdk = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    seen: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:

            async def ready() -> dict[str, Any]:
                seen.update((await http.get("/ready")).json())
                return seen

            async def ask(count: int) -> None:
                for _ in range(count):
                    answer = await sdk.chat.completions.create(
                        model="mock-echo", messages=[{"role": "user", "content": "hi"}]
                    )
                    assert answer.choices[0].message.content

            await ask(10)
            await until_true(lambda: _usage_is(ready, written=10))
            assert seen["status"] == "ready"

            relay.hang_on(b"BEGIN")
            await ask(10)  # answered while the batch hangs
            await until_true(lambda: _state_is(ready, "degraded"), seconds=4 * LIMIT)
            assert seen["database"] == "unavailable"

            await relay.restore()
            await until_true(lambda: _state_is(ready, "ready"))
            await until_true(lambda: _usage_is(ready, pending=0, spool_files=0))
            usage = seen["usage"]
            assert usage["written"] + usage["replayed"] == 20 == usage["queued"]
            await ask(10)  # and the writer writes again
            await until_true(lambda: _usage_is(ready, written=usage["written"] + 10))
        assert await rows(direct) == 30
    finally:
        await sdk.close()
        await asyncio.to_thread(server.stop)


async def _usage_is(ready: Callable[[], Awaitable[dict[str, Any]]], **expected: int) -> bool:
    usage = (await ready())["usage"]
    return all(usage[name] == value for name, value in expected.items())


async def _state_is(ready: Callable[[], Awaitable[dict[str, Any]]], status: str) -> bool:
    return bool((await ready())["status"] == status)
