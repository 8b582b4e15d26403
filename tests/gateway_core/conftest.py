"""Fixtures shared by the core tests: the databases of both dialects.

PostgreSQL is the server of ``LOCKGATE_TEST_POSTGRES_DSN`` (``.ci/run`` sets it): the session creates a
database of its own there, migrates it once and drops it at the end. When the variable is set the
server must answer: an unreachable server fails the tests instead of skipping them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from gateway_core.store.database import Database
from gateway_core.store.migrate import upgrade

POSTGRES_ENV = "LOCKGATE_TEST_POSTGRES_DSN"


def with_database_name(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A migrated PostgreSQL database of this test session."""
    dsn = os.environ.get(POSTGRES_ENV)
    if not dsn:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    import asyncpg

    name = f"lockgate_store_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn, timeout=5)  # unreachable: an error, not a skip
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database_name(dsn, name)
    try:
        await upgrade(url)
        yield url
    finally:
        admin = await asyncpg.connect(dsn, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database of each dialect (its tables are emptied by ``db``)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'lockgate.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@contextlib.asynccontextmanager
async def started_database(url: str, tables: Sequence[str]) -> AsyncIterator[Database]:
    """A started :class:`Database` at ``url``, migrated, with ``tables`` emptied (PostgreSQL's session
    database outlives a test; each SQLite database is new)."""
    if url.startswith("sqlite"):
        await upgrade(url)
    database = Database(url)
    await database.start()
    if database.dialect == "postgres":
        await database.connection().execute_script(f"TRUNCATE {', '.join(tables)} CASCADE")
    try:
        yield database
    finally:
        await database.stop()
