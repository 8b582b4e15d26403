"""The data layer on SQLite and PostgreSQL: models, constraints, contexts and database outages."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from tortoise.exceptions import IntegrityError

from gateway_core.errors import ConfigError
from gateway_core.store import database as database_module
from gateway_core.store.database import Database, DatabaseUnavailable, is_outage
from gateway_core.store.migrate import upgrade
from gateway_core.store.models import (
    ApiKey,
    BudgetPeriod,
    DeploymentRecord,
    Organization,
    Role,
    RoutingRule,
    User,
)

# --- models and constraints ---------------------------------------------------------------------------


async def test_records_round_trip(db: Database) -> None:
    with db.activate():
        parent = await Organization.create(name="Acme")
        team = await Organization.create(name="Acme Research", parent=parent, metadata={"cost_center": 42})
        user = await User.create(email="ada@example.com", name="Ada", role=Role.WRITE, org=team)
        key = await ApiKey.create(
            name="ci",
            prefix="lg-abcdefgh",
            digest="a" * 64,
            user=user,
            allowed_models=["mock-*"],
            metadata={"team": "research"},
            rpm_limit=60,
            budget_limit=Decimal("12.345678"),
            budget_period=BudgetPeriod.MONTH,
        )
        loaded = await ApiKey.get(id=key.id).select_related("user", "user__org", "user__org__parent")
        assert loaded.user is not None
        assert loaded.user.email == "ada@example.com"
        assert loaded.user.role == Role.WRITE
        assert loaded.user.org is not None and loaded.user.org.parent is not None
        assert loaded.user.org.parent.name == "Acme"
        assert loaded.allowed_models == ["mock-*"]
        assert loaded.metadata == {"team": "research"}
        assert loaded.budget_limit == Decimal("12.345678")
        assert loaded.budget_period == BudgetPeriod.MONTH
        assert loaded.created_at.tzinfo is not None
        assert [child.name for child in await parent.children.all()] == ["Acme Research"]

        await ApiKey.filter(id=key.id).update(rpm_limit=120)
        assert (await ApiKey.get(id=key.id)).rpm_limit == 120
        await key.delete()
        assert await ApiKey.filter(id=key.id).count() == 0


async def test_email_is_unique(db: Database) -> None:
    with db.activate():
        await User.create(email="bob@example.com")
        with pytest.raises(IntegrityError):
            await User.create(email="bob@example.com")


async def test_key_digest_is_unique(db: Database) -> None:
    with db.activate():
        await ApiKey.create(name="one", prefix="lg-1", digest="d" * 64)
        with pytest.raises(IntegrityError):
            await ApiKey.create(name="two", prefix="lg-2", digest="d" * 64)


async def test_an_organization_with_children_or_users_cannot_be_deleted(db: Database) -> None:
    with db.activate():
        parent = await Organization.create(name="Parent")
        child = await Organization.create(name="Child", parent=parent)
        with pytest.raises(IntegrityError):
            await parent.delete()
        user = await User.create(email="carol@example.com", org=child)
        with pytest.raises(IntegrityError):
            await child.delete()
        await user.delete()
        await child.delete()
        await parent.delete()
        assert await Organization.all().count() == 0


async def test_deleting_a_user_deletes_their_keys(db: Database) -> None:
    with db.activate():
        user = await User.create(email="dan@example.com")
        await ApiKey.create(name="k", prefix="lg-k", digest="k" * 64, user=user)
        await user.delete()
        assert await ApiKey.all().count() == 0


async def test_deployments_and_routing_rules_are_stored(db: Database) -> None:
    with db.activate():
        record = await DeploymentRecord.create(
            model_name="team-gpt", provider="openai", settings={"options": {"request_stream_usage": False}}
        )
        await RoutingRule.create(pattern="gpt-*", target="team-gpt", priority=10)
        loaded = await DeploymentRecord.get(id=record.id)
        assert loaded.settings == {"options": {"request_stream_usage": False}}
        assert loaded.enabled is True
        assert loaded.weight == 1.0
        assert [rule.pattern for rule in await RoutingRule.all()] == ["gpt-*"]


async def test_transactions_roll_back_together(db: Database) -> None:
    async def create_twice() -> None:
        async with db.transaction():
            await User.create(email="erin@example.com")
            await User.create(email="erin@example.com")

    with pytest.raises(IntegrityError):
        await create_twice()
    assert await db.run(User.all().count()) == 0


# --- Database: contexts ---------------------------------------------------------------------------------


async def test_run_activates_the_database_and_passes_other_errors_through(db: Database) -> None:
    await db.run(User.create(email="fay@example.com"))
    assert await db.run(User.filter(email="fay@example.com").exists())
    with pytest.raises(IntegrityError):
        await db.run(User.create(email="fay@example.com"))
    assert db.healthy


async def test_concurrent_tasks_can_activate_the_database(db: Database) -> None:
    async def create(index: int) -> None:
        with db.activate():
            await asyncio.sleep(0)
            await User.create(email=f"user{index}@example.com")

    await asyncio.gather(*(create(index) for index in range(20)))
    assert await db.run(User.all().count()) == 20


async def test_tasks_that_do_not_descend_from_start_up_still_reach_the_database(db: Database) -> None:
    """An ASGI server may start the gateway in its lifespan task and serve requests from other tasks."""

    async def count() -> int:
        return await User.all().count()

    loop = asyncio.get_running_loop()
    elsewhere = loop.create_task(count(), context=contextvars.Context())  # an empty context
    assert await elsewhere == 0


def test_databases_of_two_gateways_in_two_threads_do_not_clash(tmp_path: Path) -> None:
    """Each thread has its own event loop and database; neither sees the other's rows."""
    urls = [f"sqlite://{tmp_path / f'gateway{index}.db'}" for index in range(2)]
    barrier = threading.Barrier(2)
    seen: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    async def work(index: int) -> None:
        await upgrade(urls[index])
        database = Database(urls[index])
        await database.start()
        try:
            barrier.wait(10)  # both databases are started before either writes
            for round_ in range(5):
                await User.create(email=f"t{index}-{round_}@example.com")  # no activate(): inherited
                await asyncio.sleep(0.01)
            seen[index] = sorted(await User.all().values_list("email", flat=True))
        finally:
            await database.stop()

    def thread(index: int) -> None:
        try:
            asyncio.run(work(index))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(index,)) for index in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert seen[0] == [f"t0-{n}@example.com" for n in range(5)]
    assert seen[1] == [f"t1-{n}@example.com" for n in range(5)]


# --- Database: start-up -----------------------------------------------------------------------------------


async def test_an_unmigrated_database_is_refused_at_start(tmp_path: Path) -> None:
    database = Database(f"sqlite://{tmp_path / 'empty.db'}")
    with pytest.raises(ConfigError, match=r"not up to date .* run `lockgate db upgrade`"):
        await database.start()
    assert not database.started


async def test_a_missing_sqlite_folder_is_a_configuration_error(tmp_path: Path) -> None:
    database = Database(f"sqlite://{tmp_path / 'nowhere' / 'lockgate.db'}")
    with pytest.raises(ConfigError, match="does not exist"):
        await database.start()


async def test_an_in_memory_database_is_migrated_at_start() -> None:
    database = Database("sqlite://:memory:")
    await database.start()
    try:
        await database.run(User.create(email="gil@example.com"))
        assert await database.run(User.all().count()) == 1
    finally:
        await database.stop()


async def test_a_postgres_database_that_does_not_exist_is_a_configuration_error(
    postgres_url: str,
) -> None:
    url = urlunsplit(urlsplit(postgres_url)._replace(path="/lockgate_no_such_database"))
    database = Database(url)
    with pytest.raises(ConfigError, match="lockgate_no_such_database"):
        await database.start()


# --- Database: outages ---------------------------------------------------------------------------------------


async def test_an_unreachable_database_does_not_stop_start_up(refused_port: int) -> None:
    database = Database(f"postgres://lockgate:secret-pw@127.0.0.1:{refused_port}/lockgate", connect_timeout=1)
    await database.start()
    try:
        assert database.started
        assert not database.healthy
        assert "secret-pw" not in repr(database)
        with pytest.raises(DatabaseUnavailable):
            await database.run(User.all().count())
        assert await database.run(User.all().count(), default=-1) == -1
        assert await database.ping() is False
    finally:
        await database.stop()


def test_outages_are_told_from_query_errors() -> None:
    assert is_outage(ConnectionRefusedError())
    assert is_outage(TimeoutError())
    assert not is_outage(IntegrityError("duplicate key"))
    assert not is_outage(ValueError("bad"))


class TcpRelay:
    """A TCP relay to PostgreSQL that can be cut (connections dropped, new ones refused) and restored."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()
        self.server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


async def test_the_database_recovers_after_an_outage(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database_module, "PROBE_SECONDS", 0.1)
    parts = postgres_url.split("@", 1)[1].split("/", 1)[0]
    host, _, port = parts.partition(":")
    relay = TcpRelay(host, int(port or 5432))
    await relay.start()
    url = postgres_url.replace(f"@{parts}/", f"@127.0.0.1:{relay.port}/")
    database = Database(url, connect_timeout=1, pool_min=1, pool_max=2)
    recovered = asyncio.Event()
    database.on_recover(recovered.set)
    await database.start()
    try:
        assert database.healthy
        assert await database.run(User.all().count()) >= 0

        await relay.cut()
        with pytest.raises(DatabaseUnavailable):
            await database.run(User.all().count())
        assert not database.healthy

        await relay.start()  # the same port again
        await asyncio.wait_for(recovered.wait(), 10)
        assert database.healthy
        assert await database.run(User.all().count()) >= 0
    finally:
        await database.stop()
        if relay.server is not None:
            await relay.cut()
