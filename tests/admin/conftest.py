"""A gateway with the admin API on SQLite and on PostgreSQL, and logged-in users of every role.

Every test module here runs once per database. The PostgreSQL server is the one of
``LOCKGATE_TEST_POSTGRES_DSN``; each run creates a database of its own and drops it at the end. Without
the variable the PostgreSQL runs are skipped (and the run's summary says so); with it, an unreachable
server fails them.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import jwt
import pytest
from cryptography.fernet import Fernet

from gateway_core.testing import GatewayServer
from tests.services import postgres_dsn

JWT_SECRET = "admin-tests-jwt-secret-0123456789abcdefghij"
ROOT_EMAIL = "root@example.com"
ROOT_PASSWORD = "root-password-for-tests"
#: Every user the tests create gets this password (only its hash is stored).
PASSWORD = "user-password-for-tests"
TABLES = ("organizations", "users", "api_keys", "deployments", "routing_rules")


@dataclass
class Backend:
    """A migrated database of one dialect, and a way to read everything it holds."""

    dialect: str
    url: str
    sqlite_path: Path | None = None
    postgres_dsn: str | None = None

    def dump(self) -> str:
        """Every row of every table, as text: what someone reading the database would see."""
        if self.sqlite_path is not None:
            with sqlite3.connect(self.sqlite_path) as db:
                return "\n".join(db.iterdump())
        return asyncio.run(self._postgres_dump())

    async def _postgres_dump(self) -> str:
        import asyncpg

        connection = await asyncpg.connect(self.url)
        try:
            rows = []
            for table in TABLES:
                query = f"SELECT row_to_json(t)::text FROM {table} t"  # noqa: S608 (fixed table names)
                rows += [record[0] for record in await connection.fetch(query)]
            return "\n".join(rows)
        finally:
            await connection.close()


async def _seed_root(url: str) -> None:
    from tortoise.context import TortoiseContext

    from gateway_core.store.database import tortoise_config
    from gateway_core.store.models import Role
    from gateway_core.store.users import create_user

    async with TortoiseContext() as context:
        await context.init(config=tortoise_config(url, pool_min=1, pool_max=1))
        await create_user(ROOT_EMAIL, ROOT_PASSWORD, Role.ADMIN, name="Root")


def _migrate_and_seed(url: str) -> None:
    from gateway_core.store.migrate import upgrade

    asyncio.run(upgrade(url))
    asyncio.run(_seed_root(url))


async def _postgres(dsn: str, sql: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("admin") / "lockgate.db"
        url = f"sqlite://{path}"
        _migrate_and_seed(url)
        yield Backend("sqlite", url, sqlite_path=path)
        return
    dsn = postgres_dsn()
    name = f"lockgate_admin_{uuid.uuid4().hex[:12]}"
    asyncio.run(_postgres(dsn, f'CREATE DATABASE "{name}"'))  # unreachable: an error, not a skip
    url = urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))
    try:
        _migrate_and_seed(url)
        yield Backend("postgres", url, postgres_dsn=dsn)
    finally:
        asyncio.run(_postgres(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def admin_config(url: str, secrets_key: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "server": {"max_body_bytes": 64 * 1024, "graceful_timeout": 2},
        "database": {"url": url},
        "secrets": {"key": secrets_key or Fernet.generate_key().decode()},
        # The fake upstreams of the tests listen on 127.0.0.1 (test_upstream_guard.py runs without this).
        "admin": {"jwt_secret": JWT_SECRET, "allowed_upstreams": ["127.0.0.0/8"]},
        "models": {
            "mock-echo": {
                "aliases": ["mock"],
                "deployments": [{"provider": "mock", "options": {"chunks": 2}}],
            },
            "mock-other": {"deployments": [{"provider": "mock", "options": {"reply": "other"}}]},
        },
        **extra,
    }


@dataclass
class Admin:
    """The running gateway, an HTTP client on it and one logged-in user per role."""

    server: GatewayServer
    backend: Backend
    client: httpx.Client
    tokens: dict[str, str] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    org: dict[str, Any] = field(default_factory=dict)
    child_org: dict[str, Any] = field(default_factory=dict)

    def headers(self, who: str = "root") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def request(self, method: str, path: str, who: str | None = "root", **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if who is not None:
            headers.update(self.headers(who))
        return self.client.request(method, "/admin/api" + path, headers=headers, **kwargs)

    def get(self, path: str, who: str | None = "root", **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, who, **kwargs)

    def post(self, path: str, who: str | None = "root", **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, who, **kwargs)

    def patch(self, path: str, who: str | None = "root", **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, who, **kwargs)

    def delete(self, path: str, who: str | None = "root", **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, who, **kwargs)

    def login(self, email: str, password: str) -> dict[str, Any]:
        response = self.post("/auth/login", None, json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def create_user(
        self, email: str, role: str, org_id: str | None = None, who: str = "root"
    ) -> dict[str, Any]:
        body = {"email": email, "password": PASSWORD, "role": role, "org_id": org_id}
        response = self.post("/users", who, json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())


def forge(claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    """A token signed like the gateway's (or with another secret), with the claims given."""
    now = int(time.time())
    base = {"iss": "lockgate-admin", "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex, "type": "access"}
    return jwt.encode({**base, **claims}, secret, algorithm="HS256")


@pytest.fixture(scope="module")
def admin(backend: Backend) -> Iterator[Admin]:
    """A gateway on ``backend`` with users of every role, logged in.

    ``root``: the unbound admin seeded in the database; ``admin``, ``write``, ``read``: unbound users of
    those roles; ``org-admin``, ``org-write``, ``org-read``: users bound to the organization ``acme``,
    which has the child ``acme-child``.
    """
    with (
        GatewayServer(admin_config(backend.url)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        state = Admin(server, backend, client)
        state.tokens["root"] = state.login(ROOT_EMAIL, ROOT_PASSWORD)["access_token"]
        org = state.post("/organizations", json={"name": "acme"})
        assert org.status_code == 201, org.text
        state.org = org.json()
        child = state.post("/organizations", json={"name": "acme-child", "parent_id": state.org["id"]})
        assert child.status_code == 201, child.text
        state.child_org = child.json()
        for who, role, org_id in (
            ("admin", "admin", None),
            ("write", "write", None),
            ("read", "read", None),
            ("org-admin", "admin", state.org["id"]),
            ("org-write", "write", state.org["id"]),
            ("org-read", "read", state.org["id"]),
        ):
            email = f"{who}@example.com"
            state.users[who] = state.create_user(email, role, org_id)
            state.tokens[who] = state.login(email, PASSWORD)["access_token"]
        yield state
