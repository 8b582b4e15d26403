"""Schema migrations with aerich, for SQLite and PostgreSQL.

aerich writes SQL for one dialect, so each dialect has its own folder of migrations, generated from the
same models: ``migrations/sqlite/lockgate/`` and ``migrations/postgres/lockgate/`` (shipped with the
package). :func:`upgrade` applies the folder of the database's dialect; aerich's ``aerich`` table
records what ran, so upgrading twice does nothing the second time.

After changing ``gateway_core/store/models.py``, generate the migrations of both dialects with
``make migration NAME=what_changed`` (``python -m gateway_core.store.migrate make NAME``); no database
is needed. Review the SQL, then commit both files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from tortoise.context import TortoiseContext
from tortoise.exceptions import OperationalError

from gateway_core.store.database import connection_name, dialect_of, is_memory_url, tortoise_config
from gateway_core.store.models import APP

from tortoise.context import _current_context  # isort: skip  (see gateway_core.store.database)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DIALECTS = ("sqlite", "postgres")
#: Stand-in URLs to generate SQL with; nothing connects to them.
_OFFLINE_URLS = {"sqlite": "sqlite://:memory:", "postgres": "postgres://lockgate@127.0.0.1:5432/lockgate"}
#: Key of the PostgreSQL advisory lock that serialises concurrent upgrades (replicas starting together).
_ADVISORY_LOCK = 0x6C6F636B67617465  # "lockgate"


def migrations_folder(dialect: str) -> Path:
    return MIGRATIONS / dialect / APP


def migration_versions(dialect: str) -> list[str]:
    """The migration files of a dialect in the order they apply (``0_..._init.py``, ``1_...``)."""
    files = [
        path.name
        for path in migrations_folder(dialect).glob("*.py")
        if "_" in path.stem and path.stem.split("_", 1)[0].isdigit()
    ]
    return sorted(files, key=lambda name: int(name.split("_", 1)[0]))


async def applied_migrations() -> list[str]:
    """Versions recorded in aerich's table of the current Tortoise context ([] before the first)."""
    from aerich.models import Aerich

    try:
        versions = await Aerich.filter(app=APP).values_list("version", flat=True)
    except OperationalError:  # no aerich table yet
        return []
    return [str(version) for version in versions]


async def pending_migrations(dialect: str) -> list[str]:
    """Migrations of ``dialect`` the database of the current Tortoise context has not applied."""
    applied = set(await applied_migrations())
    return [version for version in migration_versions(dialect) if version not in applied]


async def apply_migrations(config: dict[str, Any], dialect: str) -> list[str]:
    """Apply the pending migrations to the database of the current Tortoise context (initialised with
    ``config``); return the versions applied. Each migration runs in its own transaction."""
    from aerich import Command

    command = Command(config, app=APP, location=str(MIGRATIONS / dialect))
    await command.init()
    applied: list[str] = await command.upgrade(run_in_transaction=True)
    return applied


async def upgrade(url: str) -> list[str]:
    """Bring the database at ``url`` up to date; return the migrations applied (none when current).

    Creates a SQLite file (and its folder) that does not exist yet. On PostgreSQL, concurrent upgrades
    wait for each other (an advisory lock), so replicas may all run it at start-up.
    """
    dialect = dialect_of(url)
    config = tortoise_config(url, pool_min=1, pool_max=2)
    credentials = config["connections"][connection_name(dialect)]["credentials"]
    if dialect == "sqlite" and not is_memory_url(url):
        Path(credentials["file_path"]).parent.mkdir(parents=True, exist_ok=True)
    context = TortoiseContext()
    token = _current_context.set(context)
    try:
        await context.init(config=config)
        async with _upgrade_lock(credentials, dialect):
            return await apply_migrations(config, dialect)
    finally:
        await context.close_connections()
        _current_context.reset(token)


@contextlib.asynccontextmanager
async def _upgrade_lock(credentials: dict[str, Any], dialect: str) -> AsyncIterator[None]:
    """Serialise upgrades of one database: a PostgreSQL advisory lock, or a lock file beside SQLite's."""
    if dialect == "sqlite":
        async with _file_lock(credentials["file_path"]):
            yield
        return
    import asyncpg

    connection = await asyncpg.connect(
        host=credentials.get("host"),
        port=credentials.get("port"),
        user=credentials.get("user"),
        password=credentials.get("password"),
        database=credentials.get("database"),
        timeout=credentials.get("timeout", 10),
        **({"ssl": credentials["ssl"]} if "ssl" in credentials else {}),
    )
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK)
        yield
    finally:
        await connection.close()  # ends the session, which releases the lock


@contextlib.asynccontextmanager
async def _file_lock(database_path: str) -> AsyncIterator[None]:
    if database_path == ":memory:":
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent upgrades of one SQLite file are not serialised
        yield
        return
    descriptor = os.open(f"{database_path}.upgrade-lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


# --- generating migrations (developers) --------------------------------------------------------------


def make_migrations(name: str) -> dict[str, str | None]:
    """Write the migrations of both dialects for the models' changes since the last migration.

    Returns each dialect's new file name, or None when the models did not change. The first call
    writes the initial migrations (``0_<timestamp>_init.py``). Each dialect is generated in a process
    of its own: aerich keeps the operations of a diff in class attributes, so a second dialect in the
    same process would inherit the first one's SQL.
    """
    import subprocess

    written: dict[str, str | None] = {}
    for dialect in DIALECTS:
        before = set(migration_versions(dialect))
        subprocess.run(  # noqa: S603 - our own module, a checked name
            [sys.executable, "-m", "gateway_core.store.migrate", "make-dialect", dialect, name], check=True
        )
        new = sorted(set(migration_versions(dialect)) - before)
        written[dialect] = new[0] if new else None
    return written


async def make_dialect_migration(dialect: str, name: str) -> None:
    """Write the migration of one dialect (see :func:`make_migrations`)."""
    from aerich import Command

    config = tortoise_config(_OFFLINE_URLS[dialect])
    folder = migrations_folder(dialect)
    folder.mkdir(parents=True, exist_ok=True)
    context = TortoiseContext()
    token = _current_context.set(context)
    try:
        await context.init(config=config)
        command = Command(config, app=APP, location=str(MIGRATIONS / dialect))
        if not migration_versions(dialect):
            await command.init_migrations(safe=True)
        else:
            await command.init(offline=True)
            await command.migrate(name, no_input=True, offline=True)
    finally:
        await context.close_connections()
        _current_context.reset(token)
    # The folders are packages, so the migrations ship with the package (the init migration needs
    # an empty folder, hence after it).
    for package in (MIGRATIONS, MIGRATIONS / dialect, folder):
        init = package / "__init__.py"
        if not init.exists():
            init.write_text(
                '"""Generated by aerich: see gateway_core/store/migrate.py."""\n', encoding="utf-8"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway_core.store.migrate", description="Lockgate schema migrations"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="generate the SQLite and PostgreSQL migrations of a model change")
    make.add_argument("name", help="what changed, e.g. add_key_tags (letters, digits, underscores)")
    one = sub.add_parser("make-dialect", help="generate the migration of one dialect")
    one.add_argument("dialect", choices=DIALECTS)
    one.add_argument("name")
    up = sub.add_parser("upgrade", help="apply the migrations to a database URL")
    up.add_argument("url")
    args = parser.parse_args(argv)
    if args.command in ("make", "make-dialect") and not args.name.replace("_", "").isalnum():
        parser.error("NAME may contain only letters, digits and underscores")
    if args.command == "make-dialect":
        asyncio.run(make_dialect_migration(args.dialect, args.name))
        return 0
    if args.command == "make":
        written = make_migrations(args.name)
        for dialect, file in written.items():
            print(f"{dialect}: {migrations_folder(dialect) / file if file else 'no changes'}")
        return 0
    applied = asyncio.run(upgrade(args.url))
    print("\n".join(applied) if applied else "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
