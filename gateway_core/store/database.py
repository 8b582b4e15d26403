"""The SQL database of one gateway: Tortoise ORM set-up, life cycle, health and outages.

Each :class:`Database` owns its own Tortoise ``TortoiseContext`` (connections and model registry), so
several gateways can run in one process, each in its own thread and event loop (the tests do). The
ORM finds the context through a context variable:

* :meth:`Database.start` makes the context current in the task that starts it, so every task started
  from there on (the server's, background tasks) inherits it;
* the first database started in a process also becomes Tortoise's process-wide fallback, for tasks
  that do not descend from the starting task (an ASGI server running the lifespan in its own task);
* :meth:`Database.activate` and :meth:`Database.run` make it current explicitly, wherever they are.

One limit of Tortoise: the model classes keep one SQL dialect's query builders, so one process runs
databases of one dialect at a time (SQLite or PostgreSQL, not both at once).

The request path never waits on the database for what it can cache. :meth:`Database.run` tells an
outage (connection refused or lost, timeout, server shutting down) from other errors: it raises
:class:`DatabaseUnavailable` or returns a default, marks the database unhealthy and probes it until it
answers again, then calls the :meth:`Database.on_recover` callbacks. The probe outlives outages that
come back while those callbacks run: it probes again until the database stays up.

Writes are bounded in time: :meth:`Database.write` runs a transaction in a task of its own (so the
transaction never becomes the connection of the caller's task, nor of tasks started from it) within
``write_timeout`` seconds, and a transaction that fails or runs out of time closes its connection
instead of returning it to the pool. On PostgreSQL every connection also carries ``statement_timeout``
(``command_timeout``) and ``idle_in_transaction_session_timeout`` (``write_timeout``), so the server
ends a session a hung network left in the middle of a transaction and releases its row locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.connection import get_connections
from tortoise.context import TortoiseContext, get_current_context, set_global_context
from tortoise.exceptions import ConfigurationError, DBConnectionError
from tortoise.transactions import in_transaction

from gateway_core.config import POSTGRES_SCHEMES, SQLITE_SCHEMES, GatewayConfig, redact_url
from gateway_core.errors import ConfigError
from gateway_core.store.models import APP

# The context variable Tortoise resolves its current context from (Tortoise.init sets it the same way).
# Setting it with our own token lets many tasks activate one context at once, which the context
# manager of TortoiseContext (one token per instance) does not allow.
from tortoise.context import _current_context  # isort: skip

log = logging.getLogger("lockgate.database")

T = TypeVar("T")

#: Modules holding the models of the ``lockgate`` app.
MODEL_MODULES = ("gateway_core.store.models",)

#: Seconds between two probes of an unreachable database.
PROBE_SECONDS = 2.0

_RAISE: Any = object()


class DatabaseUnavailable(Exception):
    """The database cannot be reached right now (refused, lost, timed out, shutting down)."""


def dialect_of(url: str) -> str:
    """``sqlite`` or ``postgres`` for a database URL."""
    scheme = url.partition("://")[0].lower()
    if scheme in SQLITE_SCHEMES:
        return "sqlite"
    if scheme in POSTGRES_SCHEMES:
        return "postgres"
    raise ConfigError(f"unsupported database URL scheme {scheme!r}: use sqlite:// or postgres://")


def connection_name(dialect: str) -> str:
    """The Tortoise connection name of a dialect.

    Tortoise caches prepared statements per connection name in the process: one name per dialect
    keeps a SQLite statement from being sent to PostgreSQL when a process uses both in turn (tests).
    """
    return f"lockgate_{dialect}"


def is_memory_url(url: str) -> bool:
    return dialect_of(url) == "sqlite" and url.partition("://")[2].split("?", 1)[0] == ":memory:"


def tortoise_config(
    url: str,
    *,
    pool_min: int = 1,
    pool_max: int = 10,
    connect_timeout: float = 5.0,
    command_timeout: float = 30.0,
    server_settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Tortoise configuration for ``url``: the ``lockgate`` models and aerich's version table.

    ``server_settings`` are PostgreSQL settings of every connection of the pool."""
    dialect = dialect_of(url)
    name = connection_name(dialect)
    connection = expand_db_url(url)
    credentials = connection["credentials"]
    if dialect == "postgres":
        connection["engine"] = "tortoise.backends.asyncpg"
        credentials.setdefault("minsize", pool_min)
        credentials.setdefault("maxsize", pool_max)
        credentials.setdefault("timeout", connect_timeout)
        credentials.setdefault("command_timeout", command_timeout)
        credentials.setdefault("application_name", "lockgate")
        if server_settings:
            credentials["server_settings"] = {**server_settings, **credentials.get("server_settings", {})}
    return {
        "connections": {name: connection},
        "apps": {
            APP: {"models": list(MODEL_MODULES), "default_connection": name},
            # aerich's table of applied migrations, read by the start-up schema check.
            "aerich": {"models": ["aerich.models"], "default_connection": name},
        },
        "use_tz": True,
        "timezone": "UTC",
    }


def session_limits(command_timeout: float, write_timeout: float) -> dict[str, str]:
    """The PostgreSQL settings that bound each session on the server's side too: a statement ends after
    ``command_timeout`` seconds, and a session left idle inside a transaction (its client gone quiet, a
    hung network) is closed after ``write_timeout`` seconds, which releases its locks."""
    return {
        "statement_timeout": str(max(1, round(command_timeout * 1000))),
        "idle_in_transaction_session_timeout": str(max(1, round(write_timeout * 1000))),
    }


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is unreachable, rather than that the query was wrong."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_outage_one(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_outage_one(exc: BaseException) -> bool:
    if isinstance(exc, DBConnectionError):
        # Tortoise's name for "cannot connect"; a database that does not exist is a configuration error.
        return type(exc.__cause__).__name__ != "InvalidCatalogNameError"
    if isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        return any(
            text in message for text in ("unable to open", "disk i/o", "database is locked", "readonly")
        )
    module = type(exc).__module__
    if module.startswith("asyncpg"):
        import asyncpg

        return isinstance(
            exc,
            asyncpg.PostgresConnectionError
            | asyncpg.InterfaceError
            | asyncpg.exceptions.OperatorInterventionError
            | asyncpg.exceptions.InsufficientResourcesError,
        )
    return False


class Database:
    """The gateway's SQL database (SQLite or PostgreSQL) through Tortoise ORM.

    Build it from the configuration with :meth:`from_config`; the gateway starts and stops it. Code that
    uses the models (``gateway_core.store.models``) runs in tasks that inherit the context, or inside
    :meth:`activate` / :meth:`run`.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
        write_timeout: float = 10.0,
        check_schema: bool = True,
    ) -> None:
        self.url = url
        self.dialect = dialect_of(url)
        #: The URL without its password, for logs and messages.
        self.display_url = redact_url(url)
        self._connection = connection_name(self.dialect)
        self.check_schema = check_schema
        self._config = tortoise_config(
            url,
            pool_min=pool_min,
            pool_max=pool_max,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            server_settings=session_limits(command_timeout, write_timeout),
        )
        #: Seconds a transaction of :meth:`write` may take, from taking a connection to its commit.
        self.write_timeout = write_timeout
        self._context: TortoiseContext | None = None
        self._probe: asyncio.Task[None] | None = None
        self._recover_callbacks: list[Callable[[], Any]] = []
        #: False while the database is known to be unreachable (and before :meth:`start`).
        self.healthy = False

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Database | None:
        """The database of a configuration's ``database`` section; None without one."""
        section = config.database
        url = config.database_url()
        if section is None or url is None:
            return None
        return cls(
            url,
            pool_min=section.pool_min,
            pool_max=section.pool_max,
            connect_timeout=section.connect_timeout,
            command_timeout=section.command_timeout,
            write_timeout=section.write_timeout,
        )

    def __repr__(self) -> str:
        return f"Database({self.display_url!r}, healthy={self.healthy})"

    @property
    def started(self) -> bool:
        return self._context is not None

    @property
    def tortoise_config(self) -> dict[str, Any]:
        """The Tortoise configuration (connections and apps); holds the password."""
        return self._config

    # --- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Set up the ORM for this database and check it can be used.

        An unreachable database is not an error: it is logged, :attr:`healthy` stays False and a
        background probe waits for it. A reachable database whose schema lacks migrations is a
        :class:`~gateway_core.errors.ConfigError` (run ``lockgate db upgrade``), except an in-memory
        SQLite database, which is migrated here since nothing else can.
        """
        if self._context is not None:
            raise RuntimeError("the database is already started")
        if self.dialect == "sqlite" and not is_memory_url(self.url):
            path = Path(self._config["connections"][self._connection]["credentials"]["file_path"])
            if not path.parent.is_dir():
                raise ConfigError(
                    f"database {self.display_url}: the folder {path.parent} does not exist "
                    "(`lockgate db upgrade` creates it with the database)"
                )
        context = TortoiseContext()
        # Current in this task from here on (Tortoise needs it while it initialises), so every task
        # started from this one inherits it.
        token = _current_context.set(context)
        try:
            await context.init(config=self._config)
        except ConfigurationError as exc:
            _current_context.reset(token)
            raise ConfigError(f"database {self.display_url}: {exc}") from None
        except BaseException:
            _current_context.reset(token)
            raise
        self._context = context
        with contextlib.suppress(ConfigurationError):  # another database of this process has it
            set_global_context(context)
        try:
            await self._first_contact()
        except BaseException:
            await self.stop()
            raise

    async def _first_contact(self) -> None:
        try:
            with self.activate():
                await self._execute("SELECT 1")
                if is_memory_url(self.url):
                    from gateway_core.store.migrate import apply_migrations

                    await apply_migrations(self._config, self.dialect)
                elif self.check_schema:
                    await self._check_schema()
        except ConfigError:
            raise
        except Exception as exc:
            if not is_outage(exc):
                raise ConfigError(f"database {self.display_url}: {type(exc).__name__}: {exc}") from None
            log.error(
                "database %s is unreachable at start-up (%s): serving from the configuration and "
                "caches, retrying every %.0f s",
                self.display_url,
                _describe(exc),
                PROBE_SECONDS,
            )
            self._start_probe()
        else:
            self.healthy = True
            log.info("database %s ready", self.display_url)

    async def _check_schema(self) -> None:
        from gateway_core.store.migrate import pending_migrations

        pending = await pending_migrations(self.dialect)
        if pending:
            raise ConfigError(
                f"database {self.display_url} is not up to date ({len(pending)} migration(s) to apply, "
                f"the first {pending[0]}): run `lockgate db upgrade`"
            )

    async def stop(self) -> None:
        """Stop probing and close the connections."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        context, self._context = self._context, None
        self.healthy = False
        if context is not None and _current_context.get() is context:
            _current_context.set(None)
        if context is not None:
            try:
                await context.close_connections()
            except Exception as exc:
                log.warning("closing database %s: %s", self.display_url, _describe(exc))

    # --- using it --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make this database the one the ORM uses in the current task, for the ``with`` block.

        Safe to nest and to use from many tasks at once.
        """
        context = self._context
        if context is None:
            raise DatabaseUnavailable(f"database {self.display_url} is not started")
        if get_current_context() is context:
            yield
            return
        token = _current_context.set(context)
        try:
            yield
        finally:
            _current_context.reset(token)

    async def run(
        self, operation: Awaitable[T], *, default: Any = _RAISE, time_limit: float | None = None
    ) -> T:
        """Await an ORM operation with this database active, handling outages.

        ``operation`` is any awaitable: a query set, ``Model.create(...)``, a coroutine. When the
        database is unreachable (or ``time_limit`` seconds pass) it is marked unhealthy and the call raises
        :class:`DatabaseUnavailable`, or returns ``default`` when one is given. Other errors
        (integrity, bad queries) are raised unchanged. The caller decides what an outage means::

            key = await db.run(ApiKey.get_or_none(digest=digest))         # DatabaseUnavailable
            rules = await db.run(RoutingRule.all(), default=None)         # None while it is down
        """
        try:
            with self.activate():
                if time_limit is None:
                    result = await operation
                else:
                    result = await asyncio.wait_for(_as_coroutine(operation), time_limit)
        except DatabaseUnavailable:
            _close_unawaited(operation)
            if default is _RAISE:
                raise
            return default  # type: ignore[no-any-return]
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.mark_unavailable(exc)
            if default is _RAISE:
                raise DatabaseUnavailable(f"database {self.display_url}: {_describe(exc)}") from exc
            return default  # type: ignore[no-any-return]
        return result

    async def ping(self) -> bool:
        """Whether the database answers ``SELECT 1`` now (updates :attr:`healthy`)."""
        try:
            with self.activate():
                await self._execute("SELECT 1")
        except Exception as exc:
            if isinstance(exc, DatabaseUnavailable) or is_outage(exc):
                self.mark_unavailable(exc)
                return False
            raise
        self.healthy = True
        return True

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[BaseDBAsyncClient]:
        """``async with db.transaction():`` — the ORM calls in the block commit or roll back together."""
        with self.activate():
            async with in_transaction(self._connection) as connection:
                yield connection

    async def write(
        self, work: Callable[[BaseDBAsyncClient], Awaitable[T]], *, time_limit: float | None = None
    ) -> T:
        """Run ``await work(connection)`` in one transaction that commits within ``time_limit`` seconds
        (``write_timeout``); returns what ``work`` returns once the transaction has committed.

        The transaction runs in a task of its own: it never becomes the connection of the calling task
        (nor of tasks that one starts later). When ``work`` fails, the time is up or the caller is
        cancelled, the transaction is abandoned and, on PostgreSQL, its connection closed rather than
        returned to the pool. Outages and running out of time mark the database unavailable and raise
        :class:`DatabaseUnavailable` (whether a commit that timed out took effect is unknown: write
        idempotently); other errors are raised unchanged.
        """
        if self._context is None:
            raise DatabaseUnavailable(f"database {self.display_url} is not started")
        limit = self.write_timeout if time_limit is None else time_limit
        task = asyncio.get_running_loop().create_task(
            self._transact(work, limit), name="lockgate-database-write"
        )
        return await self.run(task)  # cancelling the caller cancels the task, which discards the transaction

    async def _transact(self, work: Callable[[BaseDBAsyncClient], Awaitable[T]], limit: float) -> T:
        with self.activate():
            async with asyncio.timeout(limit):
                if self.dialect != "postgres":
                    async with in_transaction(self._connection) as connection:
                        return await work(connection)
                return await self._transact_postgres(work)

    async def _transact_postgres(self, work: Callable[[BaseDBAsyncClient], Awaitable[T]]) -> T:
        """One transaction on a connection of the pool, closed unless the transaction committed."""
        from tortoise.backends.asyncpg.client import AsyncpgDBClient, TransactionWrapper

        client = self.connection()
        assert isinstance(client, AsyncpgDBClient)
        if client._pool is None:
            async with client._pool_init_lock:
                if client._pool is None:
                    await client.create_connection(with_db=True)
        assert client._pool is not None
        pool = client._pool
        connection = await pool.acquire()
        transaction = TransactionWrapper(client)
        transaction._connection = connection
        # The ORM's queries in ``work`` find the transaction here, in this task's context only.
        token = get_connections().set(self._connection, transaction)
        committed = False
        try:
            await transaction.begin()
            result = await work(transaction)
            await transaction.commit()
            committed = True
            return result
        finally:
            get_connections().reset(token)
            if not committed:
                # Neither rolled back nor reset over a network that may not answer: closed. The server
                # rolls back when it sees the close, or after ``idle_in_transaction_session_timeout``.
                connection.terminate()
            await pool.release(connection)

    def connection(self) -> BaseDBAsyncClient:
        """The Tortoise client, for raw SQL (``await db.connection().execute_query(sql, params)``)."""
        if self._context is None:
            raise DatabaseUnavailable(f"database {self.display_url} is not started")
        return self._context.db(self._connection)

    # --- outages --------------------------------------------------------------------------------------

    def on_recover(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` (sync or async) each time the database answers again after an outage."""
        self._recover_callbacks.append(callback)

    def mark_unavailable(self, exc: BaseException | None = None) -> None:
        """Record an outage seen by a caller: :attr:`healthy` turns False until a probe succeeds."""
        if self.healthy:
            log.warning(
                "database %s is unreachable%s: retrying every %.0f s",
                self.display_url,
                f" ({_describe(exc)})" if exc is not None else "",
                PROBE_SECONDS,
            )
        self.healthy = False
        self._start_probe()

    def _start_probe(self) -> None:
        if self._context is None or (self._probe is not None and not self._probe.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._probe = loop.create_task(self._probe_until_back(), name="lockgate-database-probe")

    async def _probe_until_back(self) -> None:
        """Probe until the database answers, call the recovery callbacks, and start over when an
        outage came back meanwhile (a callback found it gone again): the probe ends only on a database
        that is up."""
        while True:
            await self._wait_until_reachable()
            self.healthy = True
            log.info("database %s is reachable again", self.display_url)
            for callback in list(self._recover_callbacks):
                try:
                    result = callback()
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    log.error("a database recovery callback failed: %s", _describe(exc))
                    if is_outage(exc):
                        self.healthy = False
                if not self.healthy:
                    break
            if self.healthy:
                return
            log.warning("database %s went away again during its recovery: probing", self.display_url)

    async def _wait_until_reachable(self) -> None:
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                with self.activate():
                    await asyncio.wait_for(self._execute("SELECT 1"), PROBE_SECONDS * 5)
                    if self.check_schema and not is_memory_url(self.url):
                        await self._check_schema()
            except ConfigError as exc:
                log.error("%s", exc)
                continue
            except Exception as exc:
                if not is_outage(exc):
                    log.error("database %s: probe failed: %s", self.display_url, _describe(exc))
                continue
            return

    async def _execute(self, sql: str) -> None:
        await self.connection().execute_query(sql)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _close_unawaited(operation: Awaitable[Any]) -> None:
    if inspect.iscoroutine(operation):
        operation.close()


__all__ = [
    "Database",
    "DatabaseUnavailable",
    "dialect_of",
    "is_outage",
    "tortoise_config",
]
