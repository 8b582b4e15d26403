"""Statistics from the hourly rollups: totals per period and group as the raw records add up, latency
percentiles within the histogram's resolution, organization scoping, and no reading of raw records."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from gateway_core.config import UsageConfig
from gateway_core.store.database import Database
from gateway_core.store.models import UsageRollup
from gateway_core.usage import histogram
from gateway_core.usage.log import UsageLog
from gateway_core.usage.records import UsageEntry
from gateway_core.usage.stats import StatsFilter, StatsRow, parse_since, usage_stats
from tests.gateway_core.usage.factories import usage_entry
from tests.gateway_core.usage.test_histogram import exact_percentile

MakeLog = Callable[..., Awaitable[UsageLog]]
#: A fixed moment, so hours and days are known: 22:00 UTC, two hours before midnight.
BASE = datetime(2026, 3, 14, 22, 0, tzinfo=UTC)
GROUP_OF = {
    "model": lambda e: e.model,
    "provider": lambda e: e.provider,
    "key": lambda e: e.key_id,
    "user": lambda e: e.user_id,
    "org": lambda e: e.org_id,
    "none": lambda e: None,
}


def traffic(count: int, seed: int = 7) -> list[UsageEntry]:
    """Requests over four hours around midnight, from several models, keys, users and organizations."""
    rng = random.Random(seed)
    entries = []
    for _ in range(count):
        price_known = rng.random() > 0.1
        entries.append(
            usage_entry(
                BASE + timedelta(minutes=rng.randrange(0, 240), seconds=rng.randrange(60)),
                model=rng.choice(["gpt-4o-mini", "claude-haiku", "mock"]),
                provider=rng.choice(["openai", "anthropic", None]),
                key_id=rng.choice(["key-a", "key-b", None]),
                user_id=rng.choice(["user-a", "user-b", None]),
                org_id=rng.choice(["org-a", "org-b", None]),
                prompt_tokens=rng.randrange(0, 5000),
                completion_tokens=rng.randrange(0, 1000),
                cached_tokens=rng.randrange(0, 100),
                cost=Decimal(rng.randrange(0, 10**6)) / 10**8 if price_known else None,
                price_known=price_known,
                latency_ms=int(rng.lognormvariate(6, 1)),
                status=rng.choice([200] * 8 + [429, 502, 499]),
            )
        )
    return entries


def period_of(entry: UsageEntry, interval: str) -> datetime | None:
    hour = entry.created_at.replace(minute=0, second=0, microsecond=0)
    return {"hour": hour, "day": hour.replace(hour=0), "none": None}[interval]


def expected(
    entries: Iterable[UsageEntry], interval: str, group_by: str
) -> dict[tuple[Any, Any], list[UsageEntry]]:
    groups: dict[tuple[Any, Any], list[UsageEntry]] = defaultdict(list)
    for entry in entries:
        groups[(period_of(entry, interval), GROUP_OF[group_by](entry))].append(entry)
    return groups


def assert_row_matches(row: StatsRow, entries: list[UsageEntry]) -> None:
    assert row.requests == len(entries)
    assert row.errors == sum(e.status >= 400 for e in entries)
    assert row.prompt_tokens == sum(e.prompt_tokens for e in entries)
    assert row.completion_tokens == sum(e.completion_tokens for e in entries)
    assert row.cached_tokens == sum(e.cached_tokens for e in entries)
    assert row.cost == sum((e.cost for e in entries if e.cost is not None), Decimal(0))
    assert row.unknown_cost_requests == sum(not e.price_known for e in entries)
    assert row.latency_avg_ms == pytest.approx(sum(e.latency_ms for e in entries) / len(entries))
    latencies = [e.latency_ms for e in entries]
    for estimate, fraction in ((row.latency_p50_ms, 0.5), (row.latency_p95_ms, 0.95)):
        assert estimate is not None
        lower, upper = histogram.bucket_range(histogram.bucket_of(exact_percentile(latencies, fraction)))
        assert lower <= estimate <= (upper if upper is not None else lower)


async def store(make_log: MakeLog, entries: list[UsageEntry]) -> None:
    log = await make_log(batch_size=97)
    for entry in entries:
        log.record_entry(entry)
    await log.flush()
    assert log.counters.written == len(entries)


WHOLE = StatsFilter(BASE - timedelta(days=1), BASE + timedelta(days=1))


@pytest.mark.parametrize(
    ("interval", "group_by"),
    [
        ("none", "none"),
        ("hour", "none"),
        ("day", "model"),
        ("none", "provider"),
        ("hour", "key"),
        ("day", "user"),
        ("none", "org"),
    ],
)
async def test_stats_add_up_like_the_raw_records(
    db: Database, make_log: MakeLog, interval: Any, group_by: Any
) -> None:
    entries = traffic(400)
    await store(make_log, entries)
    rows = await usage_stats(db, WHOLE, interval=interval, group_by=group_by)
    groups = expected(entries, interval, group_by)
    assert {(row.period, row.group) for row in rows} == set(groups)
    for row in rows:
        assert_row_matches(row, groups[(row.period, row.group)])
    periods = [row.period for row in rows]
    assert periods == sorted(periods, key=lambda p: p or BASE)


async def test_days_are_utc_days_and_the_range_counts_whole_hours(db: Database, make_log: MakeLog) -> None:
    entries = traffic(200)
    await store(make_log, entries)
    days = await usage_stats(db, WHOLE, interval="day")
    assert [row.period for row in days] == [
        datetime(2026, 3, 14, tzinfo=UTC),
        datetime(2026, 3, 15, tzinfo=UTC),
    ]
    start, end = BASE + timedelta(minutes=90), BASE + timedelta(hours=3)  # 23:30 to 01:00
    [row] = await usage_stats(db, StatsFilter(start, end))
    counted = [e for e in entries if BASE + timedelta(hours=1) <= e.created_at < end]  # from 23:00
    assert_row_matches(row, counted)


async def test_filters_and_organization_trees_narrow_the_stats(db: Database, make_log: MakeLog) -> None:
    entries = traffic(300)
    await store(make_log, entries)
    [row] = await usage_stats(db, StatsFilter(WHOLE.start, WHOLE.end, org_ids=["org-a"]))
    assert_row_matches(row, [e for e in entries if e.org_id == "org-a"])
    rows = await usage_stats(
        db, StatsFilter(WHOLE.start, WHOLE.end, org_ids=["org-b", "org-x"]), group_by="org"
    )
    assert [row.group for row in rows] == ["org-b"]
    [row] = await usage_stats(db, StatsFilter(WHOLE.start, WHOLE.end, model="mock", key_id="key-a"))
    assert_row_matches(row, [e for e in entries if e.model == "mock" and e.key_id == "key-a"])
    assert await usage_stats(db, StatsFilter(WHOLE.start, WHOLE.end, org_ids=[])) == []
    assert await usage_stats(db, StatsFilter(BASE - timedelta(days=9), BASE - timedelta(days=8))) == []


async def test_one_rollup_row_per_hour_and_dimensions(db: Database, make_log: MakeLog) -> None:
    entries = traffic(300)
    await store(make_log, entries)
    keys = {
        (period_of(e, "hour"), e.model, e.provider or "", e.key_id or "", e.user_id or "", e.org_id or "")
        for e in entries
    }
    rows = await db.run(UsageRollup.all())
    assert len(rows) == len(keys)
    assert sum(row.requests for row in rows) == 300
    assert all(len(row.latency_histogram) == histogram.BUCKETS for row in rows)


async def test_writers_of_several_replicas_add_up_in_the_same_rollups(
    postgres_url: str, tmp_path: Path
) -> None:
    databases = [Database(postgres_url) for _ in range(3)]
    for database in databases:
        await database.start()
    await databases[0].connection().execute_script("TRUNCATE usage_records, usage_rollups")
    logs = [
        UsageLog(database, UsageConfig(batch_size=25, flush_seconds=0.01), tmp_path / f"spool-{index}")
        for index, database in enumerate(databases)
    ]
    try:
        for log in logs:
            await log.start()
        entries = traffic(900, seed=3)
        for index, entry in enumerate(entries):  # every replica writes to the same few rollup rows
            logs[index % 3].record_entry(entry)
            if index % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*(log.flush() for log in logs))
        assert sum(log.counters.written for log in logs) == 900
        [row] = await usage_stats(databases[0], WHOLE)
        assert_row_matches(row, entries)
    finally:
        for log in logs:
            await log.stop()
        for database in databases:
            await database.stop()


async def test_stats_over_hundreds_of_thousands_of_records_read_only_the_rollups(
    postgres_url: str, tmp_path: Path
) -> None:
    db = Database(postgres_url)
    await db.start()
    reader, password = f"lockgate_stats_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    created = False
    try:
        await db.connection().execute_script("TRUNCATE usage_records, usage_rollups")
        log = UsageLog(db, UsageConfig(batch_size=97), tmp_path / "spool")
        await log.start()
        entries = traffic(500)
        for entry in entries:
            log.record_entry(entry)
        await log.stop()
        # 300,000 more raw records in the same hours, without rollups: only a query of the raw table sees them.
        await db.connection().execute_script(
            "INSERT INTO usage_records (event_id, request_id, created_at, endpoint, model, prompt_tokens, "
            "completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, total_tokens, price_known, "
            "latency_ms, status, attempts, stream, dialect) "
            "SELECT md5(n::text), 'bulk', TIMESTAMPTZ '2026-03-14 22:00:00+00' + (n % 14400) * INTERVAL '1 second', "
            "'chat', 'gpt-4o-mini', 1000, 1000, 0, 0, 0, 2000, true, 5, 200, 1, false, 'openai' "
            "FROM generate_series(1, 300000) AS n"
        )
        # A reader that may read the rollups and nothing else.
        await db.connection().execute_script(
            f'CREATE ROLE "{reader}" LOGIN PASSWORD \'{password}\'; GRANT SELECT ON usage_rollups TO "{reader}"'
        )
        created = True
        parts = urlsplit(postgres_url)
        as_reader = Database(
            urlunsplit(parts._replace(netloc=f"{reader}:{password}@{parts.hostname}:{parts.port or 5432}")),
            check_schema=False,
        )
        await as_reader.start()
        try:
            with pytest.raises(Exception, match="permission denied"):
                await as_reader.run(
                    as_reader.connection().execute_query("SELECT count(*) FROM usage_records")
                )
            [row] = await usage_stats(as_reader, WHOLE)
            assert_row_matches(row, entries)
            for interval, group_by in (("hour", "model"), ("day", "key")):
                rows = await usage_stats(as_reader, WHOLE, interval=interval, group_by=group_by)
                assert sum(r.requests for r in rows) == 500
        finally:
            await as_reader.stop()
    finally:
        if created:
            await db.connection().execute_script(
                f'REVOKE ALL ON usage_rollups FROM "{reader}"; DROP ROLE "{reader}"'
            )
        await db.stop()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", BASE - timedelta(hours=24)),
        ("7d", BASE - timedelta(days=7)),
        ("90m", BASE - timedelta(minutes=90)),
        ("2w", BASE - timedelta(weeks=2)),
        ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
        ("2026-03-01T12:00:00+02:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
    ],
)
def test_since_takes_durations_and_dates(text: str, expected: datetime) -> None:
    assert parse_since(text, BASE) == expected


def test_since_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", BASE)
