"""Writing usage records and their hourly rollups to the database, idempotently.

:func:`write_batch` runs in one transaction: it inserts the records whose ``event_id`` is not stored
yet (``ON CONFLICT DO NOTHING``) and adds exactly those to the rollup rows of their hour, so a batch
written twice (a replay after a crash) counts once. Rollup rows are locked (PostgreSQL
``FOR UPDATE``) in a fixed order before they change, so replicas writing at once add up correctly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import orjson
from tortoise.backends.base.client import BaseDBAsyncClient

from gateway_core.usage import histogram
from gateway_core.usage.records import COLUMNS, UsageEntry

#: Most rows per statement (29 parameters each keeps well under both databases' limits).
ROWS_PER_STATEMENT = 256
#: The dimensions of a rollup row, in the order of the unique constraint.
DIMENSIONS = ("model", "provider", "key_id", "user_id", "org_id")
_KEY_COLUMNS = ("bucket", *DIMENSIONS)
_COUNTERS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost",
    "unknown_cost_requests",
    "latency_sum_ms",
    "latency_histogram",
)

RollupKey = tuple[datetime, str, str, str, str, str]


@dataclass(slots=True)
class RollupDelta:
    """What a set of records adds to one rollup row."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: Decimal = Decimal(0)
    unknown_cost_requests: int = 0
    latency_sum_ms: int = 0
    latency_histogram: list[int] = field(default_factory=histogram.empty)

    def add(self, entry: UsageEntry) -> None:
        self.requests += 1
        self.errors += entry.is_error
        self.prompt_tokens += entry.prompt_tokens
        self.completion_tokens += entry.completion_tokens
        self.cached_tokens += entry.cached_tokens
        if not entry.price_known:
            self.unknown_cost_requests += 1
        elif entry.cost is not None:
            self.cost += entry.cost
        self.latency_sum_ms += entry.latency_ms
        self.latency_histogram[histogram.bucket_of(entry.latency_ms)] += 1

    def plus(self, row: dict[str, Any]) -> RollupDelta:
        """This delta added to a stored row's counters."""
        return RollupDelta(
            requests=self.requests + int(row["requests"]),
            errors=self.errors + int(row["errors"]),
            prompt_tokens=self.prompt_tokens + int(row["prompt_tokens"]),
            completion_tokens=self.completion_tokens + int(row["completion_tokens"]),
            cached_tokens=self.cached_tokens + int(row["cached_tokens"]),
            cost=self.cost + Decimal(str(row["cost"])),
            unknown_cost_requests=self.unknown_cost_requests + int(row["unknown_cost_requests"]),
            latency_sum_ms=self.latency_sum_ms + int(row["latency_sum_ms"]),
            latency_histogram=histogram.merge(
                list(self.latency_histogram), _json_list(row["latency_histogram"])
            ),
        )

    def values(self) -> list[Any]:
        return [
            self.requests,
            self.errors,
            self.prompt_tokens,
            self.completion_tokens,
            self.cached_tokens,
            self.cost,
            self.unknown_cost_requests,
            self.latency_sum_ms,
            orjson.dumps(self.latency_histogram).decode(),
        ]


def hour_of(moment: datetime) -> datetime:
    """The start of the UTC hour of ``moment``."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def rollup_key(entry: UsageEntry) -> RollupKey:
    return (
        hour_of(entry.created_at),
        entry.model,
        entry.provider or "",
        entry.key_id or "",
        entry.user_id or "",
        entry.org_id or "",
    )


def rollup_deltas(entries: Iterable[UsageEntry]) -> dict[RollupKey, RollupDelta]:
    """The records summed per rollup row."""
    deltas: dict[RollupKey, RollupDelta] = {}
    for entry in entries:
        key = rollup_key(entry)
        delta = deltas.get(key)
        if delta is None:
            delta = deltas[key] = RollupDelta()
        delta.add(entry)
    return deltas


T = TypeVar("T")


def statement_chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in slices whose sizes are powers of two up to :data:`ROWS_PER_STATEMENT` (largest
    first), so the statements built from them come in a handful of shapes: the databases' clients
    cache a prepared statement per distinct SQL text, and a shape per batch size would fill those
    caches with large statements (tens of MB per worker)."""
    start = 0
    size = ROWS_PER_STATEMENT
    while start < len(items):
        while size > len(items) - start:
            size //= 2
        yield items[start : start + size]
        start += size


async def write_batch(connection: BaseDBAsyncClient, dialect: str, entries: Sequence[UsageEntry]) -> int:
    """Store the records not stored yet and add them to their rollups; returns how many were new.

    Run it inside a transaction (``connection`` is the transaction's client).
    """
    unique = list({entry.event_id: entry for entry in entries}.values())
    new_ids: set[str] = set()
    for chunk in statement_chunks(unique):
        new_ids |= await _insert_records(connection, dialect, chunk)
    new = [entry for entry in unique if entry.event_id in new_ids]
    if new:
        await _add_to_rollups(connection, dialect, rollup_deltas(new))
    return len(new)


async def _insert_records(
    connection: BaseDBAsyncClient, dialect: str, entries: Sequence[UsageEntry]
) -> set[str]:
    params = Params(dialect)
    rows = ", ".join(f"({params.take(len(COLUMNS))})" for _ in entries)
    sql = (
        f"INSERT INTO usage_records ({', '.join(COLUMNS)}) VALUES {rows} "  # noqa: S608 (fixed columns)
        "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    )
    values = [value for entry in entries for value in entry.values()]
    returned = await connection.execute_query_dict(sql, values)
    return {str(row["event_id"]) for row in returned}


async def _add_to_rollups(
    connection: BaseDBAsyncClient, dialect: str, deltas: dict[RollupKey, RollupDelta]
) -> None:
    keys = sorted(deltas)
    stored = await _locked_rows(connection, dialect, keys)
    missing = [key for key in keys if key not in stored]
    if missing:
        inserted = await _insert_rollups(connection, dialect, missing, deltas)
        raced = [key for key in missing if key not in inserted]  # another writer created them meanwhile
        if raced:
            stored.update(await _locked_rows(connection, dialect, raced))
        lost = [key for key in missing if key not in stored and key not in inserted]
        if lost:  # never drop a delta silently: the transaction fails and the batch is kept
            raise RuntimeError(f"{len(lost)} rollup row(s) could be neither created nor found")
    if not stored:
        return
    params = Params(dialect)
    assignments = ", ".join(
        f"{name} = {params.json() if name == 'latency_histogram' else params.one()}" for name in _COUNTERS
    )
    sql = f"UPDATE usage_rollups SET {assignments} WHERE id = {params.one()}"  # noqa: S608 (fixed columns)
    updates = [[*deltas[key].plus(row).values(), row["id"]] for key, row in sorted(stored.items())]
    await connection.execute_many(sql, updates)


async def _locked_rows(
    connection: BaseDBAsyncClient, dialect: str, keys: Sequence[RollupKey]
) -> dict[RollupKey, dict[str, Any]]:
    """The stored rollup rows of ``keys``, locked until the transaction ends (PostgreSQL)."""
    found: dict[RollupKey, dict[str, Any]] = {}
    columns = ", ".join(("id", *_KEY_COLUMNS, *_COUNTERS))
    for chunk in statement_chunks(keys):
        params = Params(dialect)
        if dialect == "postgres":
            tuples = ", ".join(f"({params.take(len(_KEY_COLUMNS))})" for _ in chunk)
            where = f"({', '.join(_KEY_COLUMNS)}) IN ({tuples})"
            lock = " FOR UPDATE"
        else:
            tuples = ", ".join(f"({params.take(len(_KEY_COLUMNS))})" for _ in chunk)
            where = f"({', '.join(_KEY_COLUMNS)}) IN (VALUES {tuples})"
            lock = ""
        sql = (
            f"SELECT {columns} FROM usage_rollups WHERE {where} "  # noqa: S608 (fixed columns)
            f"ORDER BY {', '.join(_KEY_COLUMNS)}{lock}"
        )
        rows = await connection.execute_query_dict(sql, [value for key in chunk for value in key])
        for row in rows:
            found[_key_of(row)] = row
    return found


async def _insert_rollups(
    connection: BaseDBAsyncClient,
    dialect: str,
    keys: Sequence[RollupKey],
    deltas: dict[RollupKey, RollupDelta],
) -> set[RollupKey]:
    """Create the rollup rows of ``keys`` with their deltas; returns the keys it created."""
    created: set[RollupKey] = set()
    for chunk in statement_chunks(keys):
        params = Params(dialect)
        rows = ", ".join(
            "("
            + ", ".join(
                [
                    params.take(len(_KEY_COLUMNS)),
                    *(params.json() if name == "latency_histogram" else params.one() for name in _COUNTERS),
                ]
            )
            + ")"
            for _ in chunk
        )
        sql = (
            f"INSERT INTO usage_rollups ({', '.join((*_KEY_COLUMNS, *_COUNTERS))}) VALUES {rows} "  # noqa: S608
            f"ON CONFLICT ({', '.join(_KEY_COLUMNS)}) DO NOTHING RETURNING {', '.join(_KEY_COLUMNS)}"
        )
        values = [value for key in chunk for value in (*key, *deltas[key].values())]
        for row in await connection.execute_query_dict(sql, values):
            created.add(_key_of(row))
    return created


def _key_of(row: dict[str, Any]) -> RollupKey:
    return (
        as_utc(row["bucket"]),
        str(row["model"]),
        str(row["provider"]),
        str(row["key_id"]),
        str(row["user_id"]),
        str(row["org_id"]),
    )


def as_utc(value: datetime | str) -> datetime:
    """A timestamp read from either database as an aware UTC datetime (SQLite returns text)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _json_list(value: Any) -> list[int]:
    data = orjson.loads(value) if isinstance(value, str | bytes) else value
    return [int(count) for count in data] if isinstance(data, list) else []


class Params:
    """Numbered placeholders of one statement: ``$1, $2`` (PostgreSQL) or ``?`` (SQLite)."""

    def __init__(self, dialect: str) -> None:
        self.postgres = dialect == "postgres"
        self.count = 0

    def one(self) -> str:
        self.count += 1
        return f"${self.count}" if self.postgres else "?"

    def take(self, count: int) -> str:
        return ", ".join(self.one() for _ in range(count))

    def json(self) -> str:
        """A placeholder for JSON text going into a JSON column."""
        return f"CAST({self.one()} AS JSONB)" if self.postgres else self.one()
