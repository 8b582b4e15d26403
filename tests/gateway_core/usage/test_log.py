"""The usage log: records written in batches with every field right, flushed at shutdown, bounded in
memory, and never lost or doubled when the database goes away and comes back."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from gateway_core.store import database as database_module
from gateway_core.store.database import Database
from gateway_core.store.models import UsageRecord, UsageRollup
from gateway_core.types import Usage
from gateway_core.usage.log import UsageLog
from gateway_core.usage.records import DLP_FINDINGS_MAX_CHARS, UsageEntry, entry_from_context
from gateway_core.usage.spool import Spool
from tests.gateway_core.store.test_database import TcpRelay
from tests.gateway_core.usage.factories import request_context, until

MakeLog = Callable[..., Awaitable[UsageLog]]


async def stored(db: Database) -> list[UsageRecord]:
    return list(await db.run(UsageRecord.all().order_by("id")))


async def rollup_requests(db: Database) -> int:
    return sum(row.requests for row in await db.run(UsageRollup.all()))


async def test_a_record_holds_everything_about_the_request_but_its_text(
    db: Database, make_log: MakeLog
) -> None:
    log = await make_log()
    secret_prompt = "my password is hunter2, please remember it"
    ctx = request_context(
        "req-fields",
        usage=Usage(
            prompt_tokens=120,
            completion_tokens=30,
            total_tokens=150,
            cached_tokens=100,
            cache_write_tokens=20,
            reasoning_tokens=7,
        ),
        cost=Decimal("0.0012345678"),
        latency_ms=812,
        ttfb_ms=95,
        attempts=2,
        body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": secret_prompt}]},
    )
    before = datetime.now(UTC)
    log.record(ctx)
    await log.flush()

    [record] = await stored(db)
    assert record.request_id == "req-fields"
    assert len(record.event_id) == 32
    assert before - timedelta(seconds=2) <= record.created_at <= before  # when the request started
    assert (record.key_id, record.user_id, record.org_id) == ("key-1", "user-1", "org-1")
    assert (record.endpoint, record.model, record.model_group) == ("chat", "gpt-4o-mini", "gpt-4o-mini")
    assert (record.deployment_id, record.provider) == ("openai-0", "openai")
    assert record.upstream_model == "gpt-4o-mini-2024-07-18"
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (120, 30, 150)
    assert (record.cached_tokens, record.cache_write_tokens, record.reasoning_tokens) == (100, 20, 7)
    assert record.cost == Decimal("0.00123457")  # the column keeps 8 decimals
    assert record.price_known is True
    assert 811 <= record.latency_ms <= 813
    assert record.ttfb_ms is not None and 94 <= record.ttfb_ms <= 96
    assert (record.status, record.error_type, record.attempts) == (200, None, 2)
    assert (record.stream, record.dialect) == (True, "openai")
    assert log.counters.as_dict() == {"queued": 1, "written": 1, "spooled": 0, "replayed": 0, "dropped": 0}
    rows = await db.run(db.connection().execute_query_dict("SELECT * FROM usage_records"))
    assert secret_prompt not in repr(rows) and "lg-secret-key" not in repr(rows)


async def test_unknown_prices_failures_and_anonymous_requests_are_recorded(
    db: Database, make_log: MakeLog
) -> None:
    log = await make_log()
    log.record(request_context("req-unpriced", price_known=False, cost=None))
    log.record(
        request_context(
            "req-401",
            key_id=None,
            provider=None,
            usage=Usage(),
            cost=None,
            status=401,
            error_type="authentication_error",
            ttfb_ms=None,
            attempts=0,
        )
    )
    await log.flush()
    records = {r.request_id: r for r in await stored(db)}
    assert records["req-unpriced"].cost is None and records["req-unpriced"].price_known is False
    refused = records["req-401"]
    assert (refused.status, refused.error_type, refused.key_id, refused.provider) == (
        401,
        "authentication_error",
        None,
        None,
    )
    assert (refused.ttfb_ms, refused.attempts, refused.total_tokens) == (None, 0, 0)


async def test_oversized_values_are_cut_to_fit_instead_of_failing_the_batch(
    db: Database, make_log: MakeLog
) -> None:
    log = await make_log()
    log.record(
        request_context(
            "r" * 500,
            model="m\x00" * 400,
            usage=Usage(prompt_tokens=10**12),
            cost=Decimal("1e20"),
            attempts=10**6,
        )
    )
    log.record(request_context("req-normal"))
    await log.flush()
    records = await stored(db)
    assert len(records) == 2
    long = next(r for r in records if r.request_id.startswith("rrr"))
    assert (len(long.request_id), len(long.model), "\x00" in long.model) == (128, 200, False)
    assert long.prompt_tokens == 2**31 - 1 and long.attempts == 2**15 - 1
    assert log.counters.written == 2 and log.counters.dropped == 0


async def test_dlp_findings_are_stored_as_sorted_compact_json(db: Database, make_log: MakeLog) -> None:
    log = await make_log()
    findings = {
        ("PHONE_NUMBER", "response", "mask"): 1,
        ("EMAIL_ADDRESS", "request", "redact"): 2,
        ("EMAIL_ADDRESS", "request", "block"): 1,
        ("error", "response", "allow"): 1,
    }
    log.record(request_context("req-found", dlp_findings=findings))
    log.record(request_context("req-clean", dlp_findings={}))
    log.record(request_context("req-unfiltered"))
    await log.flush()

    records = {r.request_id: r.dlp_findings for r in await stored(db)}
    assert records == {
        "req-found": '[{"type":"EMAIL_ADDRESS","direction":"request","action":"block","count":1},'
        '{"type":"EMAIL_ADDRESS","direction":"request","action":"redact","count":2},'
        '{"type":"PHONE_NUMBER","direction":"response","action":"mask","count":1},'
        '{"type":"error","direction":"response","action":"allow","count":1}]',
        "req-clean": "[]",  # the filters ran and found nothing
        "req-unfiltered": None,  # no filter ran
    }


async def test_dlp_findings_are_cut_to_whole_entries(db: Database, make_log: MakeLog) -> None:
    log = await make_log()
    many = {(f"TYPE_{index:03}" + "X" * 200, "request", "redact"): 10**12 for index in range(100)}
    log.record(request_context("req-many", dlp_findings=many))
    await log.flush()

    [record] = await stored(db)
    assert record.dlp_findings is not None and len(record.dlp_findings) <= DLP_FINDINGS_MAX_CHARS
    entries = orjson.loads(record.dlp_findings)
    assert 10 < len(entries) < 100
    assert [e["type"] for e in entries] == sorted(e["type"] for e in entries)
    assert entries[0] == {
        "type": "TYPE_000" + "X" * 92,
        "direction": "request",
        "action": "redact",
        "count": 2**31 - 1,
    }


async def test_records_are_written_in_batches_and_a_partial_batch_after_flush_seconds(
    db: Database, make_log: MakeLog
) -> None:
    log = await make_log(batch_size=10, flush_seconds=300)
    for index in range(25):
        log.record(request_context(f"req-{index}"))
    await until(lambda: log.counters.written == 20)  # two full batches do not wait
    await asyncio.sleep(0.2)
    assert log.counters.written == 20 and log.pending == 5  # the partial one waits for flush_seconds
    assert len(await stored(db)) == 20
    await log.flush()
    assert len(await stored(db)) == 25 and log.pending == 0
    assert await rollup_requests(db) == 25


async def test_a_graceful_stop_writes_everything_queued(db: Database, spool_dir: Path) -> None:
    from gateway_core.config import UsageConfig

    log = UsageLog(db, UsageConfig(batch_size=7, flush_seconds=300), spool_dir)
    await log.start()
    for index in range(40):
        log.record(request_context(f"req-{index}"))
    await log.stop()
    assert len(await stored(db)) == 40
    assert await rollup_requests(db) == 40
    assert log.counters.written == 40 and log.counters.spooled == 0
    log.record(request_context("req-late"))  # after the stop: kept in the spool for the next start
    assert log.counters.spooled == 1
    later = UsageLog(db, UsageConfig(), spool_dir)
    await later.start()
    try:
        await until(lambda: later.counters.replayed == 1)
    finally:
        await later.stop()
    assert {r.request_id for r in await stored(db)} == {f"req-{i}" for i in range(40)} | {"req-late"}


async def test_a_burst_beyond_the_queue_goes_to_the_spool_and_nothing_is_lost(
    db: Database, make_log: MakeLog
) -> None:
    log = await make_log(queue_size=50, batch_size=20)
    most_pending = 0
    for index in range(600):  # one burst: the writer cannot run in between
        log.record(request_context(f"burst-{index}"))
        most_pending = max(most_pending, log.pending)
    assert most_pending == 100  # the queue and the overflow buffer, 50 each
    assert log.counters.spooled == 500
    await log.flush()
    await log.replay()
    assert log.counters.spooled == 550  # the overflow buffer reached the spool too
    assert log.counters.replayed == 550
    records = await stored(db)
    assert len(records) == 600
    assert len({r.request_id for r in records}) == 600
    assert await rollup_requests(db) == 600
    assert log.counters.dropped == 0
    assert not log.spool.segments()


async def test_replaying_a_spool_file_twice_stores_its_records_once(
    db: Database, make_log: MakeLog, tmp_path: Path
) -> None:
    log = await make_log(queue_size=1)
    for index in range(30):
        log.record(request_context(f"again-{index}"))
    await log.flush()
    await asyncio.to_thread(log.spool.rotate)
    copies = tmp_path / "copies"
    shutil.copytree(log.spool.folder, copies)
    await log.replay()
    assert len(await stored(db)) == 30
    replayed = log.counters.replayed
    for copy in copies.glob("*.jsonl"):  # as if the gateway had died before deleting them
        shutil.copy(copy, log.spool.folder / copy.name)
    await log.replay()
    assert log.counters.replayed == replayed
    assert not log.spool.segments()
    assert len(await stored(db)) == 30
    assert await rollup_requests(db) == 30


async def test_a_torn_last_line_is_skipped_and_counted(
    db: Database, make_log: MakeLog, spool_dir: Path
) -> None:
    # What a gateway that crashed mid-append leaves:
    left_behind = Spool(spool_dir, UsageEntry.from_json)
    left_behind.append([entry_from_context(request_context(f"torn-{index}")) for index in range(4)])
    left_behind.close()
    [segment] = left_behind.segments()
    with segment.open("ab") as file:
        file.write(b'{"event_id": "cut sho')
    log = await make_log()  # replays the spool at start-up
    await until(lambda: log.counters.replayed == 4)
    assert {r.request_id for r in await stored(db)} == {f"torn-{index}" for index in range(4)}
    assert log.counters.dropped == 1
    assert not log.spool.segments()


async def test_spooled_dlp_findings_are_replayed_and_older_lines_without_them_too(
    db: Database, make_log: MakeLog, spool_dir: Path
) -> None:
    left_behind = Spool(spool_dir, UsageEntry.from_json)
    findings = {("EMAIL_ADDRESS", "request", "redact"): 3}
    left_behind.append([entry_from_context(request_context("spooled", dlp_findings=findings))])
    left_behind.close()
    [segment] = left_behind.segments()
    old = orjson.loads(entry_from_context(request_context("older")).to_json())
    del old["dlp_findings"], old["tokens_estimated"]  # a line of a version before both columns
    with segment.open("ab") as file:
        file.write(orjson.dumps(old) + b"\n")
    log = await make_log()  # replays the spool at start-up
    await until(lambda: log.counters.replayed == 2)

    records = {r.request_id: r for r in await stored(db)}
    assert records["spooled"].dlp_findings == (
        '[{"type":"EMAIL_ADDRESS","direction":"request","action":"redact","count":3}]'
    )
    assert (records["older"].dlp_findings, records["older"].tokens_estimated) == (None, False)


async def test_a_spool_an_older_version_kept_for_another_database_url_is_replayed(
    db: Database, make_log: MakeLog, spool_dir: Path
) -> None:
    moved = Spool(spool_dir / f"{db.dialect}-0123456789ab", UsageEntry.from_json)
    moved.append([entry_from_context(request_context(f"moved-{index}")) for index in range(5)])
    moved.close()
    log = await make_log()  # replays the spool at start-up
    await until(lambda: log.counters.replayed == 5)
    assert {r.request_id for r in await stored(db)} == {f"moved-{index}" for index in range(5)}
    assert not moved.folder.exists()
    assert log.status()["spool_files"] == 0


async def test_a_database_outage_spools_records_and_they_are_replayed_once_it_is_back(
    postgres_url: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway_core.config import UsageConfig

    monkeypatch.setattr(database_module, "PROBE_SECONDS", 0.1)
    parts = postgres_url.split("@", 1)[1].split("/", 1)[0]
    host, _, port = parts.partition(":")
    relay = TcpRelay(host, int(port or 5432))
    await relay.start()
    database = Database(
        postgres_url.replace(f"@{parts}/", f"@127.0.0.1:{relay.port}/"), connect_timeout=1, pool_max=2
    )
    await database.start()
    await database.connection().execute_script("TRUNCATE usage_records, usage_rollups")
    log = UsageLog(database, UsageConfig(batch_size=10, flush_seconds=0.05), spool_dir)
    await log.start()
    try:
        for index in range(20):
            log.record(request_context(f"before-{index}"))
        await log.flush()
        assert log.counters.written == 20

        await relay.cut()
        for index in range(35):  # traffic goes on during the outage
            log.record(request_context(f"during-{index}"))
            await asyncio.sleep(0)
        await log.flush()
        assert not database.healthy
        assert (log.counters.written, log.counters.spooled) == (20, 35)

        await relay.start()  # the same port again
        await until(lambda: log.counters.replayed == 35)
        records = await stored(database)
        assert len(records) == 55
        assert {r.request_id for r in records} == {f"before-{i}" for i in range(20)} | {
            f"during-{i}" for i in range(35)
        }
        assert await rollup_requests(database) == 55
        assert log.counters.dropped == 0
        assert log.status()["spool_files"] == 0
    finally:
        await log.stop()
        await database.stop()
        if relay.server is not None:
            await relay.cut()
