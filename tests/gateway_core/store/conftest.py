"""Fixtures of the data layer tests: every test that takes ``db`` runs on SQLite and on PostgreSQL.

PostgreSQL is the server of ``LOCKGATE_TEST_POSTGRES_DSN`` (``.ci/run`` sets it): the session creates a
database of its own there, migrates it once and drops it at the end; each test starts with empty
tables. When the variable is set the server must answer: an unreachable server fails the tests instead
of skipping them. Redis tests use ``LOCKGATE_TEST_REDIS_URL`` the same way.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from gateway_core.store.database import Database
from tests.gateway_core.conftest import started_database

POSTGRES_ENV = "LOCKGATE_TEST_POSTGRES_DSN"
REDIS_ENV = "LOCKGATE_TEST_REDIS_URL"
TABLES = ("api_keys", "users", "organizations", "deployments", "routing_rules")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A started :class:`Database` on an up-to-date, empty database."""
    async with started_database(database_url, TABLES) as database:
        yield database


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set")
    return url
