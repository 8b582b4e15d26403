"""Retention: raw records go after ``retention_days`` and rollups after ``rollup_retention_days``, in
bounded chunks; statistics outlive the raw records."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from gateway_core.store.database import Database
from gateway_core.store.models import UsageRecord, UsageRollup
from gateway_core.usage.log import UsageLog
from gateway_core.usage.retention import apply_retention, delete_before
from gateway_core.usage.stats import StatsFilter, usage_stats
from tests.gateway_core.usage.factories import usage_entry

MakeLog = Callable[..., Awaitable[UsageLog]]
NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)  # records of one hour share it


async def store_days_ago(make_log: MakeLog, days: dict[int, int]) -> None:
    """``{days_ago: count}`` records."""
    log = await make_log()
    for ago, count in days.items():
        for index in range(count):
            log.record_entry(
                usage_entry(NOW - timedelta(days=ago, minutes=index), request_id=f"d{ago}-{index}")
            )
    await log.flush()


async def test_old_records_go_and_their_statistics_stay(db: Database, make_log: MakeLog) -> None:
    await store_days_ago(make_log, {100: 3, 40: 4, 10: 5, 1: 6})
    deleted = await apply_retention(db, retention_days=30, rollup_retention_days=60, now=NOW)
    assert deleted == {"usage_records": 7, "usage_rollups": 1}  # 3 records share one rollup hour
    remaining = await db.run(UsageRecord.all().values_list("request_id", flat=True))
    assert {str(r)[:3] for r in remaining} == {"d10", "d1-"}
    [row] = await usage_stats(db, StatsFilter(NOW - timedelta(days=365), NOW + timedelta(hours=1)))
    assert row.requests == 4 + 5 + 6  # the 40-day-old records are gone, their rollups are not


async def test_none_keeps_everything(db: Database, make_log: MakeLog) -> None:
    await store_days_ago(make_log, {4000: 2, 1: 1})
    assert await apply_retention(db, None, None, now=NOW) == {"usage_records": 0, "usage_rollups": 0}
    assert await db.run(UsageRecord.all().count()) == 3


async def test_deletion_runs_in_bounded_chunks(db: Database, make_log: MakeLog) -> None:
    await store_days_ago(make_log, {50: 40, 1: 2})
    cutoff = NOW - timedelta(days=30)
    assert await delete_before(db, "usage_records", cutoff, chunk_rows=7, max_chunks=3) == 21
    assert await db.run(UsageRecord.all().count()) == 42 - 21
    assert await delete_before(db, "usage_records", cutoff, chunk_rows=7) == 19
    assert await db.run(UsageRecord.all().count()) == 2
    assert await db.run(UsageRollup.all().count()) > 0
