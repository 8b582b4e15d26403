"""Migrations: both dialects, applied to empty databases, idempotent, in step with the models."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from aerich.coder import encoder
from aerich.utils import decompress_dict, get_models_describe
from tortoise.context import TortoiseContext

from gateway_core.cli import main
from gateway_core.store.database import Database, tortoise_config
from gateway_core.store.migrate import DIALECTS, migration_versions, migrations_folder, upgrade
from gateway_core.store.models import APP, User

TABLES = {"organizations", "users", "api_keys", "deployments", "routing_rules", "aerich"}


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'fresh' / 'lockgate.db'}"  # the folder does not exist either
        return
    dsn = os.environ.get("LOCKGATE_TEST_POSTGRES_DSN")
    if not dsn:
        pytest.skip("LOCKGATE_TEST_POSTGRES_DSN is not set")
    import asyncpg

    name = f"lockgate_migrate_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def tables_of(database: Database) -> set[str]:
    if database.dialect == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        sql = "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'"
    _, rows = await database.connection().execute_query(sql)
    return {str(row["name"]) for row in rows}


async def test_migrations_apply_to_an_empty_database_and_are_idempotent(empty_database_url: str) -> None:
    dialect = "sqlite" if empty_database_url.startswith("sqlite") else "postgres"
    assert await upgrade(empty_database_url) == migration_versions(dialect)
    assert await upgrade(empty_database_url) == []
    database = Database(empty_database_url)
    await database.start()  # the start-up check finds nothing to apply
    try:
        assert await tables_of(database) >= TABLES
        await database.run(User.create(email="migrated@example.com"))
    finally:
        await database.stop()


async def test_concurrent_upgrades_wait_for_each_other(empty_database_url: str) -> None:
    results = await asyncio.gather(upgrade(empty_database_url), upgrade(empty_database_url))
    assert sorted(results, key=len) == [
        [],
        migration_versions("sqlite" if empty_database_url.startswith("sqlite") else "postgres"),
    ]


def test_both_dialects_have_the_same_migrations() -> None:
    sqlite, postgres = (migration_versions(dialect) for dialect in DIALECTS)
    assert sqlite, "no migrations: run `make migration NAME=init`"
    strip = lambda names: [name.split("_", 2)[::2] for name in names]  # noqa: E731 - number and name
    assert strip(sqlite) == strip(postgres)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_the_last_migration_matches_the_models(dialect: str) -> None:
    """A model changed without a migration fails here: run `make migration NAME=...`."""
    url = {"sqlite": "sqlite://:memory:", "postgres": "postgres://nobody@127.0.0.1:1/none"}[dialect]
    async with TortoiseContext() as context:  # nothing connects: describing the models is offline
        await context.init(config=tortoise_config(url))
        models_now = json.loads(encoder(get_models_describe(APP)))
    last = migrations_folder(dialect) / migration_versions(dialect)[-1]
    spec = importlib.util.spec_from_file_location(f"lockgate_migration_{dialect}", last)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recorded = json.loads(encoder(decompress_dict(module.MODELS_STATE)))
    assert models_now == recorded, f"the models changed since {last.name}: run `make migration NAME=...`"


def test_migrations_are_shipped_as_package_data() -> None:
    for dialect in DIALECTS:
        folder = migrations_folder(dialect)
        assert (folder / "__init__.py").is_file()
        assert (folder.parent / "__init__.py").is_file()


# --- lockgate db upgrade --------------------------------------------------------------------------------


def test_db_upgrade_creates_and_migrates_the_sqlite_file_next_to_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    config = conf / "lockgate.yaml"
    config.write_text("database:\n  url: sqlite://../var/lockgate.db\n")
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert (tmp_path / "var" / "lockgate.db").is_file()
    assert "applied 0_" in capsys.readouterr().out
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_db_upgrade_needs_a_database_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "lockgate.yaml"
    config.write_text("models: {}\n")
    assert main(["db", "upgrade", "--config", str(config)]) == 2
    assert "no database section" in capsys.readouterr().err


def test_db_upgrade_never_prints_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], refused_port: int
) -> None:
    config = tmp_path / "lockgate.yaml"
    config.write_text(
        f"database:\n  url: postgres://lockgate:hunter2-secret@127.0.0.1:{refused_port}/lockgate\n"
        "  connect_timeout: 1\n"
    )
    assert main(["db", "upgrade", "--config", str(config)]) == 2
    out = capsys.readouterr()
    assert "upgrade failed" in out.err
    assert "hunter2-secret" not in out.err + out.out
