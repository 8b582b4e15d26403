"""Fixtures of the usage tests: a started database of each dialect with empty usage tables, and
usage logs on it (``tests/gateway_core/usage/factories.py`` builds requests and records).

PostgreSQL is the server of ``LOCKGATE_TEST_POSTGRES_DSN`` (see ``tests/gateway_core/store``): when the
variable is set the server must answer, an unreachable server fails the tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway_core.config import UsageConfig
from gateway_core.store.database import Database
from gateway_core.usage.log import UsageLog
from tests.gateway_core.conftest import started_database

USAGE_TABLES = ("usage_records", "usage_rollups")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A started database of each dialect, up to date, with empty usage tables."""
    async with started_database(database_url, USAGE_TABLES) as database:
        yield database


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
async def make_log(db: Database, spool_dir: Path) -> AsyncIterator[Callable[..., Awaitable[UsageLog]]]:
    """``await make_log(**usage_config)``: a started usage log on ``db``, stopped at the end."""
    logs: list[UsageLog] = []

    async def make(database: Database | None = None, **options: Any) -> UsageLog:
        config = UsageConfig(**{"batch_size": 50, "flush_seconds": 0.05, **options})
        log = UsageLog(database or db, config, spool_dir, stop_timeout=10)
        await log.start()
        logs.append(log)
        return log

    yield make
    for log in logs:
        await log.stop()
