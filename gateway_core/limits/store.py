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
from gateway_core.limits.redis import RedisCounters
from gateway_core.limits.windows import Backend, Verdict, Window

if TYPE_CHECKING:
    from gateway_core.store.kv import SharedRedis

log = logging.getLogger("lockgate.limits")

T = TypeVar("T")

#: Most give-backs and releases kept for replay while Redis is down; older ones are dropped.
MAX_PENDING = 10_000

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
        await reservation.take(requests)
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
        if delta == 0:
            return
        if self.redis is None or backend == "memory":
            await self.memory.adjust(scope, window, delta, at)
            return
        redis = self.redis
        await self._settle_on_redis(lambda: redis.adjust(scope, window, delta, at))

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
        kind, raw = token[:2], token[2:]
        if kind == _IN_MEMORY or self.redis is None:
            await self.memory.release(scope, name, raw)
            return
        redis = self.redis
        await self._settle_on_redis(lambda: redis.release(scope, name, raw))

    # --- outages ----------------------------------------------------------------------------------

    async def _on_redis(self, operation: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run a take on Redis: ``(True, result)``, or ``(False, None)`` to use memory instead (open);
        raises 503 (closed)."""
        from gateway_core.store.kv import RedisUnavailable

        try:
            result = await operation()
        except RedisUnavailable as exc:
            self._outage(exc)
            if self.on_outage == "closed":
                self.refusals += 1
                raise limits_unavailable() from None
            self.fallbacks += 1
            return False, None
        return True, result

    async def _settle_on_redis(self, operation: Callable[[], Awaitable[None]]) -> None:
        from gateway_core.store.kv import RedisUnavailable

        try:
            await operation()
        except RedisUnavailable as exc:
            self._outage(exc)
            if len(self._pending) >= MAX_PENDING:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(operation)

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
        from gateway_core.store.kv import RedisUnavailable

        replayed = 0
        while self._pending:
            operation = self._pending[0]
            try:
                await operation()
            except RedisUnavailable as exc:
                self._outage(exc)
                break
            except Exception as exc:
                log.error("replaying a settlement failed: %s: %s", type(exc).__name__, exc)
            self._pending.popleft()
            replayed += 1
        return replayed

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run a roll-back in the background (after a cancelled take); :meth:`stop` waits for it."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Finish background roll-backs and replay what is pending while Redis is still reachable."""
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

    @property
    def allowed(self) -> bool:
        return self.refusal is None

    async def take(self, requests: Sequence[tuple[str, Sequence[Window]]]) -> None:
        """Take each scope's windows in turn; on a refusal give back what was taken and set
        :attr:`refusal`."""
        for scope, windows in requests:
            if not windows:
                continue
            pending = asyncio.ensure_future(self.counters.take(scope, windows))
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
        slots, self.slots = self.slots, []
        for scope, name, token in slots:
            await self.counters.release(scope, name, token)
        verdicts, self.verdicts = self.verdicts, []
        for verdict in verdicts:
            for window in verdict.windows:
                await self.counters.adjust(
                    verdict.scope,
                    window,
                    used(window) - window.amount,
                    at=verdict.at,
                    backend=verdict.backend,
                )

    async def release(self) -> None:
        """Give back everything taken and free every slot."""
        await self.settle(lambda window: 0)
