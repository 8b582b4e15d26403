"""The counter store: rate and calendar windows, slots and settlements on both backends, and Redis
outages (fail open into memory, or closed with 503), with a clock the tests move by hand."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway_core.config import RedisConfig
from gateway_core.errors import GatewayError
from gateway_core.limits import (
    Counters,
    MemoryCounters,
    Period,
    RedisCounters,
    Reservation,
    Window,
    period_bounds,
)
from gateway_core.limits.windows import format_duration
from gateway_core.store import kv
from gateway_core.store.kv import SharedRedis
from tests.plugins.policies.redis_server import RedisServer

REDIS_ENV = "LOCKGATE_TEST_REDIS_URL"
#: 2026-05-31 23:59:00 UTC: one minute before a new day and a new month.
START = datetime(2026, 5, 31, 23, 59, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _delete_prefix(redis: SharedRedis, prefix: str) -> None:
    async def delete(client: Any) -> None:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(keys)

    await redis.run(delete)


@contextlib.asynccontextmanager
async def _test_redis() -> AsyncIterator[tuple[SharedRedis, str]]:
    """The test Redis and a key prefix of the test's own, removed afterwards."""
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set")
    redis = SharedRedis(RedisConfig(url=url))
    await redis.start()
    prefix = f"lockgate-test-{uuid.uuid4().hex[:12]}"
    try:
        yield redis, prefix
    finally:
        await _delete_prefix(redis, prefix)
        await redis.stop()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Any]:
    """Each backend, on the same clock; the Redis one on the test Redis under a prefix of its own."""
    if request.param == "memory":
        yield MemoryCounters(clock)
        return
    async with _test_redis() as (redis, prefix):
        yield RedisCounters(redis, prefix=prefix, clock=clock)


# --- rolling windows (GCRA) --------------------------------------------------------------------------


async def test_a_rate_admits_its_limit_then_refuses_until_one_slot_drained(store: Any, clock: Clock) -> None:
    rpm = Window("requests", 3, 60)
    for expected_remaining in (2, 1, 0):
        verdict = await store.take("key:a", [rpm])
        assert verdict.allowed
        assert verdict.remaining["requests"] == expected_remaining
    refused = await store.take("key:a", [rpm])
    assert not refused.allowed
    assert refused.refused == rpm
    assert refused.used["requests"] == 3
    assert refused.retry_after == pytest.approx(20)
    assert refused.reset["requests"] == pytest.approx(60)
    clock.advance(19.9)
    assert not (await store.take("key:a", [rpm])).allowed
    clock.advance(0.1)
    again = await store.take("key:a", [rpm])
    assert again.allowed and again.remaining["requests"] == 0
    # Another scope has counters of its own.
    assert (await store.take("key:b", [rpm])).remaining["requests"] == 2


async def test_a_steady_rate_passes_exactly_at_the_limit(store: Any, clock: Clock) -> None:
    rpm = Window("requests", 6, 60)
    admitted = 0
    for _ in range(60):  # one attempt a second for a minute, after a burst of the whole limit
        admitted += (await store.take("key:steady", [rpm])).allowed
        clock.advance(1)
    assert admitted == 6 + 59 // 10  # the burst, then one every 10 s (at 10, 20, ... 50 s)


async def test_windows_of_a_scope_are_all_or_nothing(store: Any) -> None:
    windows = [Window("requests", 10, 60), Window("tokens", 100, 60, amount=60)]
    assert (await store.take("key:c", windows)).allowed
    refused = await store.take("key:c", windows)
    assert not refused.allowed and refused.refused == windows[1]
    assert refused.remaining == {"requests": 9, "tokens": 40}  # the refused take added nothing


async def test_an_amount_above_the_limit_can_never_pass(store: Any) -> None:
    verdict = await store.take("key:d", [Window("tokens", 100, 60, amount=101)])
    assert not verdict.allowed and verdict.retry_after is None


async def test_a_limit_of_zero_refuses_everything(store: Any) -> None:
    verdict = await store.take("key:e", [Window("requests", 0, 60)])
    assert not verdict.allowed and verdict.retry_after is None


async def test_giving_back_tokens_makes_room_and_using_more_takes_it(store: Any, clock: Clock) -> None:
    tpm = Window("tokens", 100, 60, amount=80)
    taken = await store.take("key:f", [tpm])
    assert taken.remaining["tokens"] == 20
    await store.adjust("key:f", tpm, -70, taken.at)  # the call used 10 of the 80 reserved
    assert (await store.take("key:f", [tpm])).remaining["tokens"] == 10
    await store.adjust("key:f", tpm, 30)  # that one used 110: more than reserved, never refused
    over = await store.take("key:f", [Window("tokens", 100, 60, amount=1)])
    assert not over.allowed
    assert over.retry_after == pytest.approx(12.6)  # 120 used + 1 is 21 over the burst, at 0.6 s each


async def test_an_empty_window_refuses_even_nothing_once_full(store: Any) -> None:
    window = Window("tokens", 10, 60, amount=10)
    assert (await store.take("key:g", [window])).allowed
    nothing = Window("tokens", 10, 60, amount=0)
    assert not (await store.take("key:g", [nothing])).allowed
    assert (await store.take("key:other", [nothing])).allowed


# --- calendar windows ------------------------------------------------------------------------------------


async def test_a_daily_quota_resets_at_midnight_utc(store: Any, clock: Clock) -> None:
    daily = Window("requests:day", 2, Period.DAY)
    first = await store.take("key:h", [daily])
    assert first.allowed and first.reset["requests:day"] == pytest.approx(60)
    assert (await store.take("key:h", [daily])).allowed
    refused = await store.take("key:h", [daily])
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(60)
    assert refused.used["requests:day"] == 2
    clock.advance(60)  # 2026-06-01 00:00:00
    verdict = await store.take("key:h", [daily])
    assert verdict.allowed and verdict.remaining["requests:day"] == 1
    assert verdict.reset["requests:day"] == pytest.approx(86400)


async def test_a_monthly_budget_counts_the_calendar_month(store: Any, clock: Clock) -> None:
    monthly = Window("cost:month", 1_000_000, Period.MONTH, amount=600_000)
    assert (await store.take("org:i", [monthly])).allowed
    refused = await store.take("org:i", [monthly])
    assert not refused.allowed and refused.retry_after == pytest.approx(60)
    clock.advance(60)  # June
    assert (await store.take("org:i", [monthly])).allowed


async def test_a_total_never_resets(store: Any, clock: Clock) -> None:
    total = Window("tokens:total", 100, Period.TOTAL, amount=100)
    first = await store.take("key:j", [total])
    assert first.allowed and first.reset["tokens:total"] is None
    clock.advance(86400 * 400)
    refused = await store.take("key:j", [total])
    assert not refused.allowed and refused.retry_after is None


async def test_settling_after_midnight_corrects_the_day_of_the_reservation(store: Any, clock: Clock) -> None:
    daily = Window("tokens:day", 10, Period.DAY, amount=5)
    clock.advance(59)  # 23:59:59
    taken = await store.take("key:k", [daily])
    clock.advance(2)  # the next day
    assert (await store.take("key:k", [Window("tokens:day", 10, Period.DAY, amount=3)])).allowed
    await store.adjust("key:k", daily, -5, taken.at)  # gives back to yesterday, not today
    assert not (await store.take("key:k", [Window("tokens:day", 10, Period.DAY, amount=8)])).allowed
    assert (await store.take("key:k", [Window("tokens:day", 10, Period.DAY, amount=7)])).allowed


# --- durable calendar windows (budgets rebuilt from the usage records) ----------------------------------


async def _seed(store: Any, scope: str, window: Window, amount: int, at: float) -> bool:
    if isinstance(store, MemoryCounters):
        return store.seed_now(scope, window, amount, at)
    return bool(int(await store.seed_soon(scope, window, amount, at)))


async def test_a_durable_counter_its_store_never_had_is_seeded_once(store: Any, clock: Clock) -> None:
    month = Window("cost:month", 100, Period.MONTH, amount=10, durable=True)
    unseeded = await store.take("key:d", [month])
    assert not unseeded.allowed and unseeded.unseeded
    assert await _seed(store, "key:d", month, 40, unseeded.at)
    assert not await _seed(store, "key:d", month, 70, unseeded.at)  # another replica was first
    taken = await store.take("key:d", [month])
    assert taken.allowed and not taken.unseeded and taken.used["cost:month"] == 50


async def test_the_first_take_of_a_new_period_needs_no_seed(store: Any, clock: Clock) -> None:
    daily = Window("tokens:day", 100, Period.DAY, amount=10, durable=True)
    first = await store.take("key:e", [daily])
    assert first.unseeded
    await _seed(store, "key:e", daily, 30, first.at)
    assert (await store.take("key:e", [daily])).used["tokens:day"] == 40
    clock.advance(61)  # the next day: the store counted the day before, so it counts this one
    next_day = await store.take("key:e", [daily])
    assert next_day.allowed and next_day.used["tokens:day"] == 10
    clock.advance(86400 * 2)  # a day skipped: nothing tells the store counted it
    assert (await store.take("key:e", [daily])).unseeded


async def test_settlements_of_takes_made_before_the_seed_are_dropped(store: Any, clock: Clock) -> None:
    total = Window("cost:total", 100, Period.TOTAL, amount=10, durable=True)
    before = clock.now - 1  # a take made before the store lost its counters
    await _seed(store, "key:f", total, 20, clock.now)
    clock.advance(1)
    taken = await store.take("key:f", [total])
    await store.adjust("key:f", total, -10, before)  # its reservation is not in the seed: ignored
    assert (await store.take("key:f", [Window("cost:total", 100, Period.TOTAL, 0)])).used["cost:total"] == 30
    await store.adjust("key:f", total, -6, taken.at)
    assert (await store.take("key:f", [Window("cost:total", 100, Period.TOTAL, 0)])).used["cost:total"] == 24


def test_period_bounds_in_utc() -> None:
    december = datetime(2026, 12, 31, 18, 30, tzinfo=UTC).timestamp()
    assert period_bounds(Period.MONTH, december) == ("2026-12", datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    assert period_bounds(Period.DAY, december) == ("2026-12-31", datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    assert period_bounds(Period.TOTAL, december) == ("total", None)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.02, "20ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (20, "20s"),
        (59.9991, "59.999s"),
        (360, "6m0s"),
        (7384, "2h3m4s"),
    ],
)
def test_durations_read_like_openais(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- concurrency slots ------------------------------------------------------------------------------------


async def test_slots_are_limited_released_and_expire(store: Any, clock: Clock) -> None:
    first = await store.acquire("key:l", "parallel", 2, 30)
    second = await store.acquire("key:l", "parallel", 2, 30)
    assert first and second and first != second
    assert await store.acquire("key:l", "parallel", 2, 30) is None
    await store.release("key:l", "parallel", first)
    third = await store.acquire("key:l", "parallel", 2, 30)
    assert third is not None
    assert await store.acquire("key:l", "parallel", 2, 30) is None
    clock.advance(31)  # a crashed worker's slots free themselves when their lease ends
    assert await store.acquire("key:l", "parallel", 2, 30) is not None


# --- the gateway's store: several scopes, outages ------------------------------------------------------------


async def test_a_refusal_on_one_scope_gives_back_the_others(clock: Clock) -> None:
    counters = Counters(clock=clock)
    assert (await counters.take("org:x", [Window("requests", 1, 60)])).allowed  # the org is now full
    reservation = await counters.take_all(
        [("key:x", [Window("requests", 5, 60)]), ("org:x", [Window("requests", 1, 60)])]
    )
    assert not reservation.allowed
    assert reservation.refusal is not None and reservation.refusal.scope == "org:x"
    assert (await counters.take("key:x", [Window("requests", 5, 60)])).remaining["requests"] == 4


async def test_settling_a_reservation_corrects_every_scope(clock: Clock) -> None:
    counters = Counters(clock=clock)
    windows = [Window("tokens", 1000, 60, amount=400)]
    reservation = await counters.take_all([("key:y", windows), ("user:y", windows)])
    assert reservation.allowed and len(reservation.verdicts) == 2
    await reservation.settle(lambda window: 100)
    for scope in ("key:y", "user:y"):
        assert (await counters.take(scope, [Window("tokens", 1000, 60, amount=0)])).used["tokens"] == 100


async def test_a_request_cancelled_midway_gives_back_what_it_had_taken(clock: Clock) -> None:
    counters = Counters(clock=clock)
    reservation = Reservation(counters)
    rpm = [Window("requests", 5, 60)]
    taking = asyncio.ensure_future(reservation.take([("key:gone", rpm), ("org:gone", rpm)]))
    await asyncio.sleep(0)  # the first take is under way
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    holding = asyncio.ensure_future(reservation.acquire("key:gone", "parallel", 1, 60))
    await asyncio.sleep(0)
    holding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holding
    await counters.stop()  # waits for the background roll-backs
    for scope in ("key:gone", "org:gone"):
        assert (await counters.take(scope, [Window("requests", 5, 60, amount=0)])).used["requests"] == 0
    assert await counters.acquire("key:gone", "parallel", 1, 60) is not None


@pytest.fixture
def fast_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv, "PROBE_SECONDS", 0.05)


async def test_an_outage_fails_open_into_memory_and_recovers(clock: Clock, fast_probe: None) -> None:
    with RedisServer() as server:
        redis = SharedRedis(RedisConfig(url=server.url, timeout=0.3))
        await redis.start()
        counters = Counters(redis, on_outage="open", clock=clock)
        try:
            rpm = [Window("requests", 2, 60)]
            assert (await counters.take("key:z", rpm)).backend == "redis"
            server.kill()
            during = [await counters.take("key:z", rpm) for _ in range(3)]
            assert [v.backend for v in during] == ["memory"] * 3
            assert [v.allowed for v in during] == [True, True, False]  # still enforced, per worker
            assert counters.fallbacks == 3 and counters.outages == 1
            assert counters.status()["state"] == "fallback"
            server.start()
            for _ in range(200):
                if counters.healthy:
                    break
                await asyncio.sleep(0.05)
            assert counters.status()["state"] == "ok"
            verdict = await counters.take("key:z", rpm)
            assert verdict.backend == "redis" and verdict.allowed
        finally:
            await redis.stop()


async def test_an_outage_fails_closed_with_503_and_settlements_wait_for_redis(
    clock: Clock, fast_probe: None
) -> None:
    with RedisServer() as server:
        redis = SharedRedis(RedisConfig(url=server.url, timeout=0.3))
        await redis.start()
        counters = Counters(redis, on_outage="closed", clock=clock)
        try:
            tokens = Window("tokens:total", 1000, Period.TOTAL, amount=100)
            taken = await counters.take("key:w", [tokens])
            server.kill()
            with pytest.raises(GatewayError) as refused:
                await counters.take("key:w", [tokens])
            assert refused.value.status == 503 and refused.value.code == "limits_unavailable"
            assert refused.value.headers["Retry-After"] == "1"
            assert counters.refusals == 1 and counters.status()["state"] == "refusing"
            # The call used 300 tokens, 200 more than reserved: never refused, written once Redis is back.
            await counters.adjust("key:w", tokens, 200, at=taken.at, backend=taken.backend)
            assert counters.status()["pending"] == 1
            server.start()  # a new, empty Redis: the replayed settlement is all it holds
            for _ in range(200):
                if counters.healthy and not counters.status()["pending"]:
                    break
                await asyncio.sleep(0.05)
            assert counters.status()["pending"] == 0
            verdict = await counters.take("key:w", [Window("tokens:total", 1000, Period.TOTAL, amount=0)])
            assert verdict.used["tokens:total"] == 200
        finally:
            await redis.stop()


# --- batches: one round trip per loop turn ----------------------------------------------------------------


@pytest.fixture
async def on_redis(clock: Clock) -> AsyncIterator[Counters]:
    """Gateway counters on the test Redis, under a prefix of their own."""
    async with _test_redis() as (redis, prefix):
        counters = Counters(redis, prefix=prefix, clock=clock)
        try:
            yield counters
        finally:
            await counters.stop()


def _trips(counters: Counters) -> int:
    assert counters.redis is not None
    return counters.redis.round_trips


async def test_operations_started_together_share_one_round_trip(on_redis: Counters) -> None:
    rpm = [Window("requests", 10, 60)]
    before = _trips(on_redis)
    verdicts = await asyncio.gather(*(on_redis.take(f"key:{n}", rpm) for n in range(8)))
    assert [v.allowed for v in verdicts] == [True] * 8
    assert _trips(on_redis) == before + 1
    gave_back = [on_redis.adjust(f"key:{n}", rpm[0], -1, backend="redis") for n in range(8)]
    await asyncio.gather(*gave_back)
    assert _trips(on_redis) == before + 2
    assert (await on_redis.take("key:3", [Window("requests", 10, 60, amount=0)])).used["requests"] == 0


async def test_a_take_over_several_scopes_is_one_all_or_nothing_operation(on_redis: Counters) -> None:
    assert (await on_redis.take("org:full", [Window("requests", 1, 60)])).allowed
    before = _trips(on_redis)
    reservation = Reservation(on_redis)
    await reservation.take_soon(
        [("key:k", [Window("requests", 5, 60)]), ("org:full", [Window("requests", 1, 60)])]
    )
    assert _trips(on_redis) == before + 1  # no roll-back needed: nothing was taken
    assert reservation.refusal is not None and reservation.refusal.scope == "org:full"
    assert reservation.verdicts == []
    assert (await on_redis.take("key:k", [Window("requests", 5, 60, amount=0)])).used["requests"] == 0


async def test_policies_checking_and_settling_together_share_round_trips(on_redis: Counters) -> None:
    rpm, budget = Window("requests", 10, 60), Window("cost:day", 1000, Period.DAY, amount=300)
    limits, budgets = Reservation(on_redis), Reservation(on_redis)
    before = _trips(on_redis)
    checks = [limits.take_soon([("key:p", [rpm])]), budgets.take_soon([("key:p", [budget])])]
    for check in checks:
        await check
    assert _trips(on_redis) == before + 1
    settles = [limits.settle_soon(lambda w: 1), budgets.settle_soon(lambda w: 120)]
    for settle in settles:
        await settle
    assert _trips(on_redis) == before + 2
    spent = await on_redis.take("key:p", [Window("cost:day", 1000, Period.DAY, amount=0)])
    assert spent.used["cost:day"] == 120


async def test_a_settlement_rides_along_with_the_next_take(on_redis: Counters) -> None:
    tpm = Window("tokens", 1000, 60, amount=400)
    reservation = Reservation(on_redis)
    await reservation.take_soon([("key:ride", [tpm])])
    before = _trips(on_redis)
    settling = reservation.settle_soon(lambda window: 100)
    await Reservation(on_redis).take_soon([("key:other", [tpm])])
    await settling
    assert _trips(on_redis) == before + 1
    assert (await on_redis.take("key:ride", [Window("tokens", 1000, 60, amount=0)])).used["tokens"] == 100


async def test_on_redis_cluster_a_batch_holds_one_scope(on_redis: Counters) -> None:
    assert on_redis.redis is not None
    on_redis.redis.spans_scopes = False  # as with ``redis.cluster: true``
    before = _trips(on_redis)
    rpm = [Window("requests", 1, 60)]
    await asyncio.gather(
        on_redis.take("key:c1", rpm), on_redis.take("key:c1", rpm), on_redis.take("org:c1", rpm)
    )
    assert _trips(on_redis) == before + 2  # one per scope
    reservation = Reservation(on_redis)
    await reservation.take_soon([("key:c2", rpm), ("org:c1", rpm)])  # scope by scope, rolled back
    assert reservation.refusal is not None and reservation.refusal.scope == "org:c1"
    assert (await on_redis.take("key:c2", [Window("requests", 1, 60, amount=0)])).used["requests"] == 0


async def test_a_batched_take_never_looked_at_is_given_back(on_redis: Counters) -> None:
    rpm = [Window("requests", 5, 60)]
    reservation = Reservation(on_redis)
    check = reservation.take_soon([("key:lost", rpm), ("org:lost", rpm)])
    check.close()  # type: ignore[attr-defined]  # a check never awaited (its request was cancelled)
    await reservation.settle_soon(lambda window: 0)
    await on_redis.stop()
    for scope in ("key:lost", "org:lost"):
        assert (await on_redis.take(scope, [Window("requests", 5, 60, amount=0)])).used["requests"] == 0


async def test_a_batched_take_cancelled_midway_is_given_back(on_redis: Counters) -> None:
    rpm = [Window("requests", 5, 60)]
    reservation = Reservation(on_redis)
    taking = asyncio.ensure_future(reservation.take_soon([("key:cx", rpm), ("org:cx", rpm)]))
    await asyncio.sleep(0)  # the batch is under way
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    await on_redis.stop()  # waits for the background roll-back
    for scope in ("key:cx", "org:cx"):
        assert (await on_redis.take(scope, [Window("requests", 5, 60, amount=0)])).used["requests"] == 0


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_a_batch_lost_to_an_outage_follows_the_outage_mode(
    clock: Clock, fast_probe: None, mode: str
) -> None:
    with RedisServer() as server:
        redis = SharedRedis(RedisConfig(url=server.url, timeout=0.3))
        await redis.start()
        counters = Counters(redis, on_outage=mode, clock=clock)
        try:
            rpm = [Window("requests", 5, 60)]
            await counters.take("key:o", rpm)
            server.kill()
            reservation = Reservation(counters)
            if mode == "open":
                await reservation.take_soon([("key:o", rpm), ("org:o", rpm)])
                assert [v.backend for v in reservation.verdicts] == ["memory", "memory"]
                assert counters.fallbacks == 1
            else:
                with pytest.raises(GatewayError) as refused:
                    await reservation.take_soon([("key:o", rpm), ("org:o", rpm)])
                assert refused.value.code == "limits_unavailable" and counters.refusals == 1
            assert counters.outages == 1
        finally:
            await redis.stop()


async def test_settlements_redis_missed_are_replayed_together_when_it_is_back(
    clock: Clock, fast_probe: None
) -> None:
    with RedisServer() as server:
        redis = SharedRedis(RedisConfig(url=server.url, timeout=0.3))
        await redis.start()
        counters = Counters(redis, on_outage="open", clock=clock)
        try:
            tokens = Window("tokens:total", 10_000, Period.TOTAL, amount=100)
            taken = [await counters.take(f"key:r{n}", [tokens]) for n in range(3)]
            server.kill()
            for n, verdict in enumerate(taken):  # each call used 50 more than it reserved
                await counters.adjust(f"key:r{n}", tokens, 50, at=verdict.at, backend=verdict.backend)
            assert counters.status()["pending"] == 3
            assert counters.redis is not None
            before = counters.redis.round_trips
            server.start()  # a new, empty Redis: the replayed settlements are all it holds
            for _ in range(200):
                if counters.healthy and not counters.status()["pending"]:
                    break
                await asyncio.sleep(0.05)
            assert counters.status()["pending"] == 0
            assert counters.redis.round_trips == before + 1  # all three in one batch
            probe = Window("tokens:total", 10_000, Period.TOTAL, amount=0)
            for n in range(3):
                assert (await counters.take(f"key:r{n}", [probe])).used["tokens:total"] == 50
        finally:
            await redis.stop()
