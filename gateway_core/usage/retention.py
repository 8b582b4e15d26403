"""Deleting old usage rows in bounded chunks: raw records after ``retention_days``, rollups after
``rollup_retention_days``. Each chunk is its own statement, so the tables are never locked for long."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from gateway_core.store.database import Database

#: Rows deleted per statement.
CHUNK_ROWS = 5_000
#: Statements per table and run at most; what is left waits for the next run.
MAX_CHUNKS = 200

_TABLES = {"usage_records": "created_at", "usage_rollups": "bucket"}


async def delete_before(
    database: Database,
    table: str,
    cutoff: datetime,
    *,
    chunk_rows: int = CHUNK_ROWS,
    max_chunks: int = MAX_CHUNKS,
) -> int:
    """Delete the rows of ``table`` (``usage_records`` or ``usage_rollups``) older than ``cutoff``;
    returns how many. Raises ``DatabaseUnavailable`` during an outage."""
    column = _TABLES[table]
    mark = "$1" if database.dialect == "postgres" else "?"
    limit = int(chunk_rows)
    sql = (
        f"DELETE FROM {table} WHERE id IN "  # noqa: S608 (fixed table and column names)
        f"(SELECT id FROM {table} WHERE {column} < {mark} ORDER BY id LIMIT {limit})"
    )
    deleted = 0
    for _ in range(max_chunks):
        count, _rows = await database.run(database.connection().execute_query(sql, [cutoff]))
        deleted += count
        if count < limit:
            break
        await asyncio.sleep(0)  # let requests and the writer run between chunks
    return deleted


async def apply_retention(
    database: Database,
    retention_days: int | None,
    rollup_retention_days: int | None,
    *,
    now: datetime | None = None,
) -> dict[str, int]:
    """Apply both retention periods (None keeps rows forever); returns the rows deleted per table."""
    now = now or datetime.now(UTC)
    deleted = {"usage_records": 0, "usage_rollups": 0}
    if retention_days is not None:
        deleted["usage_records"] = await delete_before(
            database, "usage_records", now - timedelta(days=retention_days)
        )
    if rollup_retention_days is not None:
        deleted["usage_rollups"] = await delete_before(
            database, "usage_rollups", now - timedelta(days=rollup_retention_days)
        )
    return deleted
