"""The PostgreSQL and Redis servers of the tests, named by two environment variables.

Unset, the tests (or variants) that need the server are skipped with the reason :func:`not_set`, and
the run's summary counts them (``tests/conftest.py``). Set, the server must answer: an unreachable
server fails the tests instead of skipping them.
"""

from __future__ import annotations

import os

import pytest

POSTGRES_ENV = "LOCKGATE_TEST_POSTGRES_DSN"
REDIS_ENV = "LOCKGATE_TEST_REDIS_URL"
#: What ``make test`` and ``.ci/run`` set them to.
DEFAULTS = {
    POSTGRES_ENV: "postgres://postgres@127.0.0.1:5432/test",
    REDIS_ENV: "redis://127.0.0.1:6379/0",
}


def not_set(variable: str) -> str:
    """The reason of a test skipped for want of ``variable``."""
    return f"{variable} is not set"


def _required(variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        pytest.skip(not_set(variable))
    return value


def postgres_dsn() -> str:
    """The test PostgreSQL server's DSN; skips the calling test when the variable is unset."""
    return _required(POSTGRES_ENV)


def redis_url() -> str:
    """The test Redis server's URL; skips the calling test when the variable is unset."""
    return _required(REDIS_ENV)
