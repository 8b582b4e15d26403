"""How batches of usage records become SQL: whatever the batch sizes, the statements come in a handful of
shapes, since each database client keeps a prepared statement per distinct SQL text (a shape per batch
size grew a worker by some 1.5 KB per request on SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from gateway_core.store.database import Database
from gateway_core.store.models import UsageRecord, UsageRollup
from gateway_core.usage.storage import ROWS_PER_STATEMENT, statement_chunks, write_batch
from tests.gateway_core.usage.factories import usage_entry


def test_chunks_are_powers_of_two_in_order_and_cover_everything() -> None:
    sizes: set[int] = set()
    for count in range(2 * ROWS_PER_STATEMENT + 3):
        items = list(range(count))
        chunks = [list(chunk) for chunk in statement_chunks(items)]
        assert [item for chunk in chunks for item in chunk] == items
        for chunk in chunks:
            assert 1 <= len(chunk) <= ROWS_PER_STATEMENT
            assert len(chunk) & (len(chunk) - 1) == 0, len(chunk)  # a power of two
        sizes |= {len(chunk) for chunk in chunks}
    assert len(sizes) == ROWS_PER_STATEMENT.bit_length()


class RecordingClient:
    """A transaction's client that remembers the SQL texts it was given."""

    def __init__(self, client: BaseDBAsyncClient, texts: set[str]) -> None:
        self._client = client
        self.texts = texts

    async def execute_query_dict(self, sql: str, values: list[Any] | None = None) -> list[dict[str, Any]]:
        self.texts.add(sql)
        return await self._client.execute_query_dict(sql, values)

    async def execute_many(self, sql: str, values: list[list[Any]]) -> None:
        self.texts.add(sql)
        await self._client.execute_many(sql, values)


async def test_batches_of_every_size_make_a_few_statement_shapes(db: Database) -> None:
    texts: set[str] = set()
    start = datetime.now(UTC) - timedelta(hours=2)
    written = 0
    for size in range(1, 41):
        # Each batch spreads over its own rollup rows too (one per minute-distinct key).
        batch = [usage_entry(start, key_id=f"key-{size}-{n}") for n in range(size)]

        async def write(client: BaseDBAsyncClient, batch: list[Any] = batch) -> int:
            return await write_batch(RecordingClient(client, texts), db.dialect, batch)  # type: ignore[arg-type]

        written += await db.write(write)
    assert written == sum(range(1, 41)) == await db.run(UsageRecord.all().count())
    assert sum(row.requests for row in await db.run(UsageRollup.all())) == written
    inserts = {text for text in texts if text.startswith("INSERT INTO usage_records")}
    assert len(inserts) == 6, len(inserts)  # 1, 2, 4, 8, 16 and 32 rows: not one per batch size
    assert len(texts) <= 4 * 6 + 1
