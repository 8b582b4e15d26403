"""The billing records writer: idempotent writes, and a spool on disk that keeps the charges of a
shutdown (or of a long outage) while the database is unreachable and replays them, once, later.

Every test runs on SQLite and on PostgreSQL, except the one that cuts a real connection (PostgreSQL).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from gateway_core import billing
from gateway_core.billing import BillingWriter, Ledger, Movement, Owner, Reservation, from_units
from gateway_core.store import database as database_module
from gateway_core.store.database import Database
from gateway_core.store.models import Balance, BillingKind, BillingRecord, OwnerType
from gateway_core.usage.spool import Spool
from tests.gateway_core.conftest import started_database
from tests.gateway_core.store.postgres_relay import PostgresRelay
from tests.gateway_core.store.test_database import TcpRelay
from tests.gateway_core.usage.factories import until

BILLING_TABLES = ("balances", "billing_records")
USER = Owner(OwnerType.USER, "user-1")
ORG = Owner(OwnerType.ORG, "org-1")
#: One cent, in the ledger's units.
CENT = 1_000_000


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A started database of each dialect, up to date, without balances or billing records."""
    async with started_database(database_url, BILLING_TABLES) as database:
        yield database


async def _empty(database: Database) -> None:
    if database.dialect == "postgres":
        await database.connection().execute_script(f"TRUNCATE {', '.join(BILLING_TABLES)}")


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "billing-spool"


def movement(owner: Owner, units: int, request_id: str) -> Movement:
    return Movement(
        owner, BillingKind.CHARGE, units, request_id, f"charge of {request_id}", datetime.now(UTC)
    )


async def charges(database: Database, owner: Owner) -> list[BillingRecord]:
    query = BillingRecord.filter(owner_type=owner.type, owner_id=owner.id, kind=BillingKind.CHARGE)
    return list(await database.run(query.order_by("id")))


async def stored_balance(database: Database, owner: Owner) -> Decimal:
    row = await database.run(Balance.get(owner_type=owner.type, owner_id=owner.id))
    return Decimal(row.amount)


async def charge(ledger: Ledger, owner: Owner, units: int, request_id: str) -> None:
    """What the billing plugin does for one request: reserve, then settle and record the charge."""
    reservation = await ledger.reserve(owner, units, allow_negative=False)
    assert isinstance(reservation, Reservation), reservation
    await ledger.settle(reservation, units, request_id=request_id, note="a request", record=True)


def spool_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.rglob("*.jsonl"))


async def test_a_batch_written_twice_is_stored_and_counted_once(db: Database) -> None:
    writer = BillingWriter(db, interval=3600, batch_size=100)
    batch = [
        movement(USER, -CENT, "req-1"),
        movement(USER, -2 * CENT, "req-2"),
        movement(ORG, -CENT, "req-3"),
    ]
    for _ in range(2):  # the same movements again: a retry after a lost answer, or a replay
        for item in batch:
            writer.add(item)
        writer.add(batch[0])  # and once more within one batch
        assert await writer.flush()
        assert writer.pending == {}

    users = await charges(db, USER)
    assert [(r.request_id, r.amount) for r in users] == [
        ("req-1", Decimal("-0.01")),
        ("req-2", Decimal("-0.02")),
    ]
    assert [r.balance_after for r in users] == [Decimal("-0.01"), Decimal("-0.03")]
    assert {r.event_id for r in users} == {batch[0].event_id, batch[1].event_id}
    assert [r.request_id for r in await charges(db, ORG)] == ["req-3"]
    assert await stored_balance(db, USER) == Decimal("-0.03")
    assert await stored_balance(db, ORG) == Decimal("-0.01")


async def test_close_with_the_database_down_spools_and_the_next_start_replays(
    db: Database, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database_module, "PROBE_SECONDS", 3600)  # down until the test says otherwise
    first = Ledger(db)
    await first.start(interval=3600, batch_size=2, spool_dir=spool_dir)
    await first.top_up(USER, Decimal("1"), note="", actor=None)
    await first.top_up(ORG, Decimal("2"), note="", actor=None)
    for index in range(5):
        await charge(first, USER, CENT, f"user-{index}")
    for index in range(3):
        await charge(first, ORG, 2 * CENT, f"org-{index}")

    db.mark_unavailable()  # the database stops answering before the shutdown
    await first.close()
    assert len(spool_files(spool_dir)) == 1
    assert await charges(db, USER) == []
    assert await stored_balance(db, USER) == Decimal("1")

    assert await db.ping()  # it answers again; a new gateway starts
    second = Ledger(db)
    await second.start(interval=3600, batch_size=2, spool_dir=spool_dir)
    try:
        users, orgs = await charges(db, USER), await charges(db, ORG)
        assert sorted(r.request_id for r in users) == [f"user-{index}" for index in range(5)]
        assert sorted(r.request_id for r in orgs) == [f"org-{index}" for index in range(3)]
        assert all(r.amount == Decimal("-0.01") for r in users)
        assert all(r.amount == Decimal("-0.02") for r in orgs)
        assert await stored_balance(db, USER) == Decimal("0.95")
        assert await stored_balance(db, ORG) == Decimal("1.94")
        # Replayed before the balances were loaded: the live balances hold every charge.
        assert await second.live(USER) == Decimal("0.95")
        assert await second.live(ORG) == Decimal("1.94")
        assert spool_files(spool_dir) == []
    finally:
        await second.close()


async def test_a_replayed_spool_whose_records_are_written_charges_once(
    db: Database, spool_dir: Path, tmp_path: Path
) -> None:
    writer = BillingWriter(db, interval=3600, batch_size=3)
    batch = [movement(USER, -CENT, f"req-{index}") for index in range(7)]
    for item in batch:
        writer.add(item)
    assert await writer.flush()
    # A crash between writing the records and deleting the spool file that held them.
    left_behind = Spool(spool_dir, Movement.from_json)
    left_behind.append(batch)
    left_behind.close()
    copies = tmp_path / "copies"
    shutil.copytree(left_behind.folder, copies)

    ledger = Ledger(db)
    await ledger.start(interval=3600, batch_size=3, spool_dir=spool_dir)  # replays the spool
    try:
        assert spool_files(spool_dir) == []
        for copy in copies.glob("*.jsonl"):  # and the same file once more
            shutil.copy(copy, left_behind.folder / copy.name)
        assert ledger.writer is not None
        assert await ledger.writer.replay() == 0
        assert spool_files(spool_dir) == []
        assert len(await charges(db, USER)) == 7
        assert await stored_balance(db, USER) == Decimal("-0.07")
        assert await ledger.live(USER) == Decimal("-0.07")
        assert ledger.writer.pending == {}
    finally:
        await ledger.close()


async def test_a_spool_another_worker_left_is_replayed_within_a_minute(
    db: Database, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(billing, "SPOOL_LOOK_SECONDS", 0.05)
    writer = BillingWriter(db, interval=0.02, spool=Spool(spool_dir, Movement.from_json))
    await writer.start()
    try:
        # Another worker of the server stops while the database is down: its charges are spooled.
        other = Spool(spool_dir, Movement.from_json)
        other.append([movement(USER, -CENT, f"other-{index}") for index in range(3)])
        other.close()
        await until(lambda: not spool_files(spool_dir))
        assert sorted(r.request_id for r in await charges(db, USER)) == ["other-0", "other-1", "other-2"]
        assert await stored_balance(db, USER) == Decimal("-0.03")
    finally:
        await writer.close()


async def test_a_spool_kept_for_another_database_url_is_replayed(db: Database, spool_dir: Path) -> None:
    """Older versions kept a spool folder per database URL: one left for another host or port (the
    database moved) holds this deployment's charges, replayed into the database of now, once."""
    moved = Spool(spool_dir / f"{db.dialect}-0123456789ab", Movement.from_json)
    moved.append([movement(USER, -CENT, f"moved-{index}") for index in range(4)])
    moved.close()
    ledger = Ledger(db)
    await ledger.start(interval=3600, batch_size=10, spool_dir=spool_dir)  # replays the spool
    try:
        assert spool_files(spool_dir) == []
        assert not moved.folder.exists()  # the emptied folder of the old layout is removed
        assert sorted(r.request_id for r in await charges(db, USER)) == [f"moved-{i}" for i in range(4)]
        assert await stored_balance(db, USER) == Decimal("-0.04")
    finally:
        await ledger.close()


async def test_a_torn_spool_line_is_skipped_and_the_rest_replayed(db: Database, spool_dir: Path) -> None:
    left_behind = Spool(spool_dir, Movement.from_json)
    left_behind.append([movement(USER, -CENT, f"req-{index}") for index in range(3)])
    left_behind.close()
    [segment] = spool_files(spool_dir)
    with segment.open("ab") as file:
        file.write(b'{"event_id": "cut sho')
    writer = BillingWriter(db, interval=3600, spool=Spool(left_behind.folder, Movement.from_json))
    assert await writer.replay() == 3
    assert await stored_balance(db, USER) == Decimal("-0.03")
    assert spool_files(spool_dir) == []


async def test_an_outage_spools_beyond_the_queue_counts_it_as_pending_and_replays_it_once_back(
    request: pytest.FixtureRequest, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_url: str = request.getfixturevalue("postgres_url")
    monkeypatch.setattr(database_module, "PROBE_SECONDS", 0.1)
    parts = server_url.split("@", 1)[1].split("/", 1)[0]
    host, _, port = parts.partition(":")
    relay = TcpRelay(host, int(port or 5432))
    await relay.start()
    database = Database(
        server_url.replace(f"@{parts}/", f"@127.0.0.1:{relay.port}/"), connect_timeout=1, pool_max=2
    )
    await database.start()
    await _empty(database)
    ledgers: list[Ledger] = []
    try:
        first = Ledger(database)
        ledgers.append(first)
        await first.start(interval=0.05, batch_size=10, spool_dir=spool_dir, queue_size=5)
        await first.top_up(USER, Decimal("1"), note="", actor=None)
        writer = first.writer
        assert writer is not None

        await relay.cut()
        for index in range(12):  # traffic goes on: more than the queue holds
            await charge(first, USER, CENT, f"during-{index}")
        await until(lambda: len(writer) == 0 and bool(spool_files(spool_dir)))
        assert writer.pending == {USER: -12 * CENT}  # spooled, not written: still pending
        for index in range(2):
            await charge(first, USER, CENT, f"last-{index}")
        await first.close()  # the database is still down: the last two go to the spool too
        assert database.healthy is False

        second = Ledger(database)  # a new gateway starts while the database is down
        ledgers.append(second)
        await second.start(interval=0.05, batch_size=10, spool_dir=spool_dir, queue_size=5)
        assert second.writer is not None
        assert second.writer.pending == {USER: -14 * CENT}  # a balance loaded now would subtract them

        await relay.start()  # the same port again: the database answers, the spool is replayed
        await until(
            lambda: not spool_files(spool_dir) and second.writer is not None and not second.writer.pending
        )
        records = await charges(database, USER)
        assert sorted(r.request_id for r in records) == sorted(
            [f"during-{index}" for index in range(12)] + [f"last-{index}" for index in range(2)]
        )
        assert await stored_balance(database, USER) == Decimal("1") - from_units(14 * CENT)
        await charge(second, USER, 0, "after")  # loads the balance from the database
        assert await second.live(USER) == Decimal("0.86")
    finally:
        for ledger in ledgers:
            await ledger.close()
        await database.stop()
        if relay.server is not None:
            await relay.cut()


async def test_a_hung_database_neither_blocks_other_writers_nor_loses_a_charge(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network goes silent as a batch commits (its balance row locked): the write gives up within
    ``write_timeout``, the charges wait, the server ends the hung session, so another replica's writer
    is not blocked, and every charge is stored once when the network is back."""
    server_url = postgres_url
    monkeypatch.setattr(database_module, "PROBE_SECONDS", 0.1)
    limit = 1.5
    relay = PostgresRelay(server_url)
    await relay.start()
    database = Database(
        relay.url, connect_timeout=limit, command_timeout=limit, write_timeout=limit, pool_max=2
    )
    async with started_database(server_url, BILLING_TABLES) as direct:
        await database.start()
        hung = BillingWriter(database, interval=0.05, batch_size=10)
        other = BillingWriter(direct, interval=3600)
        await hung.start()
        try:
            for index in range(5):
                hung.add(movement(USER, -CENT, f"before-{index}"))
            await until(lambda: not hung.pending)  # written
            relay.hang_on(b"COMMIT")
            for index in range(5):
                hung.add(movement(USER, -CENT, f"hung-{index}"))
            await until(lambda: relay.mode == "hang")
            for index in range(5):  # another replica charges the same balance meanwhile
                other.add(movement(USER, -CENT, f"other-{index}"))
            assert await asyncio.wait_for(other.flush(), 4 * limit)
            await until(lambda: not database.healthy, seconds=4 * limit)
            assert hung.pending == {USER: -5 * CENT}  # not written: waiting

            await relay.restore()
            await until(lambda: not hung.pending)
            assert len(await charges(direct, USER)) == 15
            assert await stored_balance(direct, USER) == Decimal("-0.15")
        finally:
            await hung.close()
            await database.stop()
            await relay.stop()
