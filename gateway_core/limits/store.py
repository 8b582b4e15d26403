"""The gateway's counter store (``gateway.counters``): Redis when configured, else memory, and what
happens while Redis is down.

With ``redis.on_outage: open`` (the default) a Redis outage switches every operation to this worker's
memory: limits keep being enforced, per worker instead of globally, and the switch is logged once per
outage. With ``closed`` takes and slot acquisitions raise 503 ``limits_unavailable`` instead. Either
way give-backs and releases of reservations taken on Redis are never refused: the ones Redis misses
are queued and replayed when it is back. When Redis recovers, the memory counters of the outage are
dropped and Redis is the source of truth again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from gateway_core.errors import GatewayError
from gateway_core.limits.memory import MemoryCounters
from gateway_core.limits.redis import Batch, RedisCounters, verdicts_of
from gateway_core.limits.windows import Backend, Verdict, Window

if TYPE_CHECKING:
    from gateway_core.store.kv import SharedRedis

log = logging.getLogger("lockgate.limits")

T = TypeVar("T")

#: Most give-backs and releases kept for replay while Redis is down; older ones are dropped.
MAX_PENDING = 10_000
#: Settlements replayed together once Redis is back (one batch each group).
REPLAY_AT_ONCE = 500

#: Slot tokens say which store holds the slot.
_IN_MEMORY = "m:"
_IN_REDIS = "r:"


def limits_unavailable() -> GatewayError:
    return GatewayError(
        503,
        "Rate limits and budgets cannot be checked right now: their store is unreachable. Retry shortly.",
        type="server_error",
        code="limits_unavailable",
        headers={"Retry-After": "1"},
    )


class Counters:
    """Counters, rate windows and concurrency slots, all-or-nothing per scope."""

    def __init__(
        self,
        redis: SharedRedis | None = None,
        *,
        on_outage: str = "open",
        prefix: str = "lockgate:limits",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if on_outage not in ("open", "closed"):
            raise ValueError("on_outage must be 'open' or 'closed'")
        self.on_outage = on_outage
        self.memory = MemoryCounters(clock)
        self.redis: RedisCounters | None = None
        if redis is not None:
            self.redis = RedisCounters(redis, prefix=prefix, clock=clock)
            redis.on_recover(self._recovered)
        #: Operations served from memory because Redis was down (``on_outage: open``).
        self.fallbacks = 0
        #: Requests refused with 503 because Redis was down (``on_outage: closed``).
        self.refusals = 0
        #: Redis outages seen.
        self.outages = 0
        #: Give-backs and releases dropped because too many waited for Redis.
        self.dropped = 0
        self._pending: deque[Callable[[], Awaitable[None]]] = deque()
        self._in_outage = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- state ------------------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        return "memory" if self.redis is None else "redis"

    def status(self) -> dict[str, Any]:
        """What ``GET /ready`` shows under ``limits``."""
        state = "ok"
        if self._in_outage:
            state = "fallback" if self.on_outage == "open" else "refusing"
        return {
            "backend": self.backend,
            "state": state,
            "on_outage": self.on_outage,
            "fallbacks": self.fallbacks,
            "refusals": self.refusals,
            "outages": self.outages,
            "pending": len(self._pending),
        }

    @property
    def healthy(self) -> bool:
        return not self._in_outage

    # --- operations -------------------------------------------------------------------------------

    async def take(self, scope: str, windows: Sequence[Window]) -> Verdict:
        """Add each window's amount only if every window of ``scope`` stays within its limit."""
        if self.redis is None:
            return await self.memory.take(scope, windows)
        redis = self.redis
        on_redis, verdict = await self._on_redis(lambda: redis.take(scope, windows))
        if on_redis and verdict is not None:
            return verdict
        return await self.memory.take(scope, windows)

    async def take_all(self, requests: Sequence[tuple[str, Sequence[Window]]]) -> Reservation:
        """Take on several scopes (key, user, organization ...), all or nothing: on a refusal the
        scopes already taken are given back and the refusing verdict is in ``refusal``."""
        reservation = Reservation(self)
        await reservation.take_soon(requests)
        return reservation

    async def adjust(
        self,
        scope: str,
        window: Window,
        delta: int,
        *,
        at: float | None = None,
        backend: Backend | None = None,
    ) -> None:
        """Add ``delta`` (negative: give back) to a window, never refused.

        ``at`` and ``backend`` come from the verdict of the take being corrected: a calendar window is
        adjusted in the period the take fell in, on the store that took it.
        """
        pending = self.adjust_soon(scope, window, delta, at=at, backend=backend, urgent=True)
        if pending is not None:
            await asyncio.wait([pending])  # a failure is queued for replay, never raised

    def adjust_soon(
        self,
        scope: str,
        window: Window,
        delta: int,
        *,
        at: float | None = None,
        backend: Backend | None = None,
        urgent: bool = False,
    ) -> asyncio.Future[Any] | None:
        """Start :meth:`adjust` now: on Redis it joins the next batch (``urgent``: the one of this
        loop turn), so the settlements of one request share a round trip with each other and with
        the checks of the next requests. Answers what to await for it to be written (or queued for
        replay while Redis is down), None when it is done."""
        if delta == 0:
            return None
        if self.redis is None or backend == "memory":
            self.memory.adjust_now(scope, window, delta, at)
            return None
        redis = self.redis
        return self._settling(
            redis.adjust_soon(scope, window, delta, at, urgent=urgent),
            lambda: redis.adjust(scope, window, delta, at),
        )

    async def give_back(
        self,
        scope: str,
        window: Window,
        amount: int,
        *,
        at: float | None = None,
        backend: Backend | None = None,
    ) -> None:
        """Return ``amount`` of a reservation (what a request did not use)."""
        await self.adjust(scope, window, -amount, at=at, backend=backend)

    async def seed(self, scope: str, window: Window, amount: int, *, at: float, backend: Backend) -> bool:
        """Set a durable window (see :attr:`Window.durable`) of the period ``at`` falls in to
        ``amount`` on the store that answered ``unseeded`` (``backend``), unless it counts already
        (another worker or replica seeded it first). True when this call seeded it; raises
        ``RedisUnavailable`` when Redis is down."""
        if self.redis is None or backend == "memory":
            return self.memory.seed_now(scope, window, amount, at)
        return bool(int(await self.redis.seed_soon(scope, window, amount, at)))

    async def acquire(self, scope: str, name: str, limit: int, lease_seconds: float) -> str | None:
        """A concurrency slot of ``scope`` (at most ``limit`` held at once): a token, or None when all
        are held. Slots not released within ``lease_seconds`` free themselves."""
        if self.redis is None:
            token = await self.memory.acquire(scope, name, limit, lease_seconds)
            return None if token is None else _IN_MEMORY + token
        redis = self.redis
        on_redis, token = await self._on_redis(lambda: redis.acquire(scope, name, limit, lease_seconds))
        if on_redis:
            return None if token is None else _IN_REDIS + token
        token = await self.memory.acquire(scope, name, limit, lease_seconds)
        return None if token is None else _IN_MEMORY + token

    async def release(self, scope: str, name: str, token: str) -> None:
        """Free a slot taken with :meth:`acquire`."""
        pending = self.release_soon(scope, name, token, urgent=True)
        if pending is not None:
            await asyncio.wait([pending])

    def release_soon(
        self, scope: str, name: str, token: str, *, urgent: bool = False
    ) -> asyncio.Future[Any] | None:
        """Start :meth:`release` now (see :meth:`adjust_soon`)."""
        kind, raw = token[:2], token[2:]
        if kind == _IN_MEMORY or self.redis is None:
            self.memory.release_now(scope, name, raw)
            return None
        redis = self.redis
        return self._settling(
            redis.release_soon(scope, name, raw, urgent=urgent), lambda: redis.release(scope, name, raw)
        )

    def _settling(
        self, written: asyncio.Future[Any], replay: Callable[[], Awaitable[None]]
    ) -> asyncio.Future[Any]:
        """``written``, with a failure for want of Redis queued for replay as soon as it is known
        (whether or not anyone awaits it)."""
        from gateway_core.store.kv import RedisUnavailable

        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                return
            exc = future.exception()
            if exc is None:
                return
            if isinstance(exc, RedisUnavailable):
                self._outage(exc)
                self._queue(replay)
            else:
                log.error("a limit settlement failed: %s: %s", type(exc).__name__, exc)

        written.add_done_callback(done)
        return written

    def _queue(self, operation: Callable[[], Awaitable[None]]) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(operation)

    # --- outages ----------------------------------------------------------------------------------

    async def _on_redis(self, operation: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run a take on Redis: ``(True, result)``, or ``(False, None)`` to use memory instead (open);
        raises 503 (closed)."""
        from gateway_core.store.kv import RedisUnavailable

        try:
            result = await operation()
        except RedisUnavailable as exc:
            if not self.fall_back(exc):
                raise limits_unavailable() from None
            return False, None
        return True, result

    def fall_back(self, exc: BaseException) -> bool:
        """A take could not reach Redis: True to take in memory instead (``on_outage: open``),
        False when the request must be refused (counted)."""
        self._outage(exc)
        if self.on_outage == "closed":
            self.refusals += 1
            return False
        self.fallbacks += 1
        return True

    def _outage(self, exc: BaseException) -> None:
        if self._in_outage:
            return
        self._in_outage = True
        self.outages += 1
        if self.on_outage == "open":
            log.warning(
                "limits store unreachable (%s): rate limits, quotas and budgets are enforced per worker "
                "in memory until Redis is back",
                exc,
            )
        else:
            log.warning(
                "limits store unreachable (%s): requests are refused with 503 until Redis is back", exc
            )

    async def _recovered(self) -> None:
        if not self._in_outage:
            return
        self._in_outage = False
        self.memory.clear()
        replayed = await self._replay()
        log.info(
            "limits store reachable again: limits are global again (%d settlement(s) replayed)", replayed
        )

    async def _replay(self) -> int:
        """Write the settlements Redis missed, :data:`REPLAY_AT_ONCE` at a time (each group one
        batch, one round trip); stops at the first that Redis misses again."""
        from gateway_core.store.kv import RedisUnavailable

        replayed = 0
        while self._pending:
            group = [self._pending.popleft() for _ in range(min(REPLAY_AT_ONCE, len(self._pending)))]
            try:
                outcomes = await asyncio.gather(*(operation() for operation in group), return_exceptions=True)
            except asyncio.CancelledError:
                self._pending.extendleft(reversed(group))  # kept for the next replay
                raise
            missed: list[Callable[[], Awaitable[None]]] = []
            for operation, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, RedisUnavailable):
                    self._outage(outcome)
                    missed.append(operation)
                    continue
                if isinstance(outcome, BaseException):
                    log.error("replaying a settlement failed: %s: %s", type(outcome).__name__, outcome)
                replayed += 1
            if missed:
                self._pending.extendleft(reversed(missed))
                break
        return replayed

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run a roll-back in the background (after a cancelled take); :meth:`stop` waits for it."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Finish background roll-backs and replay what is pending while Redis is still reachable."""
        if self.redis is not None:
            await self.redis.flush()
            await asyncio.sleep(0)  # the settlements' done callbacks queue what Redis missed
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._pending and self.redis is not None and not self._in_outage:
            await self._replay()
        if self._pending:
            log.warning(
                "%d limit settlement(s) not written: Redis unreachable at shutdown", len(self._pending)
            )


class Reservation:
    """What one request took (windows on several scopes, concurrency slots), to settle once it ended.

    Safe against the request being cancelled midway: a take or slot that lands after the cancel is
    given back in the background.
    """

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        #: The allowed verdicts, one per scope, in the order taken.
        self.verdicts: list[Verdict] = []
        #: The verdict that refused, if one did (everything taken before it was given back).
        self.refusal: Verdict | None = None
        #: Concurrency slots held: (scope, name, token).
        self.slots: list[tuple[str, str, str]] = []
        #: A batched take not yet looked at: its future, clock time and requests.
        self._batched: tuple[asyncio.Future[Any], Batch, list[tuple[str, Sequence[Window]]]] | None = None

    @property
    def allowed(self) -> bool:
        return self.refusal is None

    def take_soon(self, requests: Sequence[tuple[str, Sequence[Window]]]) -> Awaitable[None]:
        """Start :meth:`take` now and answer what to await for its outcome.

        On Redis the take of every scope is one all-or-nothing operation of this loop turn's batch:
        policies that start their takes in the synchronous part of their check hook share one round
        trip with each other and with the requests arriving together. (On Redis Cluster, where one
        script cannot span scopes, and in memory, the scopes are taken in turn when awaited.)
        """
        requests = [(scope, windows) for scope, windows in requests if windows]
        counters = self.counters
        redis = counters.redis
        if (
            redis is None
            or not requests
            or not counters.healthy
            or not redis.redis.healthy
            or (len(requests) > 1 and not redis.spans_scopes)
        ):
            return self.take(requests)
        future, batch = redis.take_soon(requests)
        self._batched = (future, batch, requests)
        return self._taken(future, batch, requests)

    async def _taken(
        self, future: asyncio.Future[Any], batch: Batch, requests: list[tuple[str, Sequence[Window]]]
    ) -> None:
        from gateway_core.store.kv import RedisUnavailable

        try:
            answer = await asyncio.shield(future)
        except asyncio.CancelledError:
            self._abandon_batched()
            raise
        except RedisUnavailable as exc:
            self._batched = None
            if not self.counters.fall_back(exc):
                raise limits_unavailable() from None
            await self._take_each(requests, self.counters.memory.take)
            return
        self._batched = None
        verdicts = verdicts_of(answer, requests, batch.now)
        if verdicts[-1].allowed:
            self.verdicts += verdicts
        else:
            self.refusal = verdicts[-1]  # nothing was taken

    def _abandon_batched(self) -> None:
        """A batched take nobody will look at (the request was cancelled, or its check never
        awaited): once it answers, give back what it took."""
        batched, self._batched = self._batched, None
        if batched is None:
            return
        future, batch, requests = batched
        if not future.done():
            self.counters.spawn(self._undo_batched_when_done(future, batch, requests))
        elif not future.cancelled() and future.exception() is None:
            verdicts = verdicts_of(future.result(), requests, batch.now)
            if verdicts[-1].allowed:
                self.verdicts += verdicts

    async def _undo_batched_when_done(
        self, future: asyncio.Future[Any], batch: Batch, requests: list[tuple[str, Sequence[Window]]]
    ) -> None:
        try:
            answer = await future
        except Exception:
            return
        verdicts = verdicts_of(answer, requests, batch.now)
        if verdicts[-1].allowed:
            self.verdicts += verdicts
        await self.release()

    async def take(self, requests: Sequence[tuple[str, Sequence[Window]]]) -> None:
        """Take each scope's windows in turn; on a refusal give back what was taken and set
        :attr:`refusal`."""
        await self._take_each(requests, self.counters.take)

    async def _take_each(
        self,
        requests: Sequence[tuple[str, Sequence[Window]]],
        take: Callable[[str, Sequence[Window]], Awaitable[Verdict]],
    ) -> None:
        for scope, windows in requests:
            if not windows:
                continue
            pending = asyncio.ensure_future(take(scope, windows))
            try:
                verdict = await asyncio.shield(pending)
            except asyncio.CancelledError:
                self.counters.spawn(self._undo_when_done(pending))
                raise
            except BaseException:
                await self.release()
                raise
            if not verdict.allowed:
                await self.release()
                self.refusal = verdict
                return
            self.verdicts.append(verdict)

    async def acquire(self, scope: str, name: str, limit: int, lease_seconds: float) -> bool:
        """Hold a concurrency slot until the reservation is settled; False when all are held."""
        pending = asyncio.ensure_future(self.counters.acquire(scope, name, limit, lease_seconds))
        try:
            token = await asyncio.shield(pending)
        except asyncio.CancelledError:
            self.counters.spawn(self._free_when_done(scope, name, pending))
            raise
        if token is None:
            return False
        self.slots.append((scope, name, token))
        return True

    async def _undo_when_done(self, pending: asyncio.Future[Verdict]) -> None:
        try:
            verdict = await pending
        except Exception:
            verdict = None
        if verdict is not None and verdict.allowed:
            self.verdicts.append(verdict)
        await self.release()

    async def _free_when_done(self, scope: str, name: str, pending: asyncio.Future[str | None]) -> None:
        try:
            token = await pending
        except Exception:
            token = None
        if token is not None:
            self.slots.append((scope, name, token))
        await self.release()

    async def settle(self, used: Callable[[Window], int]) -> None:
        """Free the slots and correct every window by what the request really used
        (``used(window)``) minus its amount."""
        await self.settle_soon(used)

    def settle_soon(self, used: Callable[[Window], int]) -> Awaitable[None]:
        """Start :meth:`settle` now: on Redis its operations join the next batch, so a
        settle hook that calls this in its synchronous part shares the round trip with the other
        policies settling the same request. Await the answer to know the settlement was written (or
        queued for replay while Redis is down); it never raises."""
        self._abandon_batched()
        slots, self.slots = self.slots, []
        verdicts, self.verdicts = self.verdicts, []
        counters = self.counters
        waits: list[asyncio.Future[Any]] = []
        for scope, name, token in slots:
            released = counters.release_soon(scope, name, token)
            if released is not None:
                waits.append(released)
        for verdict in verdicts:
            for window in verdict.windows:
                adjusted = counters.adjust_soon(
                    verdict.scope,
                    window,
                    used(window) - window.amount,
                    at=verdict.at,
                    backend=verdict.backend,
                )
                if adjusted is not None:
                    waits.append(adjusted)
        return _written(waits)

    async def release(self) -> None:
        """Give back everything taken and free every slot."""
        await self.settle(lambda window: 0)


async def _written(waits: list[asyncio.Future[Any]]) -> None:
    if waits:
        await asyncio.wait(waits)
