"""Counters in the worker's memory: the embedded default, and the fallback while Redis is down.

Every operation runs without awaiting anything, so it is atomic within the worker's event loop.
Entries that no longer matter (drained rate windows, ended periods, expired leases) are swept once a
minute.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence

from gateway_core.limits.windows import (
    Verdict,
    Window,
    admits,
    after_adjust,
    after_take,
    calendar_period,
    period_bounds,
    verdict_of,
)

#: Seconds between two sweeps of stale entries.
SWEEP_SECONDS = 60.0


class MemoryCounters:
    """The counter store of one worker."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        #: (scope, counter) -> GCRA tat, or count used; with the clock time it stops mattering.
        self._values: dict[tuple[str, str], tuple[float, float | None]] = {}
        #: (scope, name) -> token -> lease end.
        self._slots: dict[tuple[str, str], dict[str, float]] = {}
        #: Markers of durable windows, as in Redis: (scope, counter) -> (counted since, expiry or None).
        self._since: dict[tuple[str, str], tuple[float, float | None]] = {}
        self._next_sweep = 0.0

    def _key(self, scope: str, window: Window, now: float) -> tuple[tuple[str, str], float | None]:
        """The entry of ``window`` at ``now`` and when it stops mattering (None: never, or computed)."""
        if window.period is None:
            return (scope, window.name), None
        period_id, ends = period_bounds(window.period, now)
        return (scope, f"{window.name}:{period_id}"), ends

    def _markers(
        self, scope: str, window: Window, now: float
    ) -> tuple[tuple[str, str], tuple[str, str], float | None]:
        """A durable window's marker, the previous period's (the same for a total) and its expiry."""
        assert window.period is not None
        period = calendar_period(window.period, now)
        if period is None:
            marker = (scope, f"{window.name}:total")
            return marker, marker, None
        previous = (scope, f"{window.name}:{period.previous_id}")
        return (scope, f"{window.name}:{period.id}"), previous, period.next_end

    def _state(self, key: tuple[str, str], now: float, rolling: bool) -> float:
        entry = self._values.get(key)
        return entry[0] if entry is not None else (now if rolling else 0.0)

    def _store(self, key: tuple[str, str], window: Window, state: float, ends: float | None) -> None:
        if window.rolling:
            self._values[key] = (state, state)
        else:
            self._values[key] = (state, ends)

    async def take(self, scope: str, windows: Sequence[Window]) -> Verdict:
        now = self.clock()
        self._sweep(now)
        keys = [self._key(scope, window, now) for window in windows]
        states = [
            self._state(key, now, window.rolling) for (key, _), window in zip(keys, windows, strict=True)
        ]
        first_uses = []
        for index, window in enumerate(windows):
            if window.durable and window.period is not None:
                marker, previous, since = self._markers(scope, window, now)
                if marker not in self._since:
                    if previous not in self._since:
                        return verdict_of(scope, windows, states, index, now, "memory", unseeded=True)
                    first_uses.append((marker, since))
        for index, window in enumerate(windows):
            if not admits(window, states[index], now):
                return verdict_of(scope, windows, states, index, now, "memory")
        for marker, since in first_uses:
            self._since[marker] = (now, since)
        after = []
        for (key, ends), window, state in zip(keys, windows, states, strict=True):
            new = after_take(window, state, now)
            if new != state or key in self._values:
                self._store(key, window, new, ends)
            after.append(new)
        return verdict_of(scope, windows, after, None, now, "memory")

    async def adjust(self, scope: str, window: Window, delta: int, at: float | None = None) -> None:
        self.adjust_now(scope, window, delta, at)

    def adjust_now(self, scope: str, window: Window, delta: int, at: float | None = None) -> None:
        """:meth:`adjust`, for callers that cannot await."""
        if delta == 0:
            return
        now = self.clock()
        when = now if at is None or window.rolling else at
        key, ends = self._key(scope, window, when)
        if key not in self._values and delta < 0:
            return
        if window.durable and window.period is not None:
            since = self._since.get(self._markers(scope, window, when)[0])
            if since is None or when < since[0]:
                return  # taken before the counter was seeded: the seed holds what it used
        state = self._state(key, now, window.rolling)
        self._store(key, window, after_adjust(window, state, now, delta), ends)

    def seed_now(self, scope: str, window: Window, amount: int, at: float) -> bool:
        """Set a durable window of the period ``at`` falls in to ``amount`` unless it counts already;
        True when seeded."""
        marker, _, since = self._markers(scope, window, at)
        if marker in self._since:
            return False
        key, ends = self._key(scope, window, at)
        self._store(key, window, float(amount), ends)
        self._since[marker] = (self.clock(), since)
        return True

    async def acquire(self, scope: str, name: str, limit: int, lease_seconds: float) -> str | None:
        now = self.clock()
        self._sweep(now)
        held = self._slots.setdefault((scope, name), {})
        for token, until in list(held.items()):
            if until <= now:
                del held[token]
        if len(held) >= limit:
            return None
        token = secrets.token_hex(8)
        held[token] = now + lease_seconds
        return token

    async def release(self, scope: str, name: str, token: str) -> None:
        self.release_now(scope, name, token)

    def release_now(self, scope: str, name: str, token: str) -> None:
        """:meth:`release`, for callers that cannot await."""
        held = self._slots.get((scope, name))
        if held is not None:
            held.pop(token, None)
            if not held:
                del self._slots[(scope, name)]

    def clear(self) -> None:
        self._values.clear()
        self._slots.clear()
        self._since.clear()

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_SECONDS
        stale = [key for key, (_, until) in self._values.items() if until is not None and until <= now]
        for key in stale:
            del self._values[key]
        for key in [key for key, (_, until) in self._since.items() if until is not None and until <= now]:
            del self._since[key]
        for slot_key, held in list(self._slots.items()):
            for token, until in list(held.items()):
                if until <= now:
                    del held[token]
            if not held:
                del self._slots[slot_key]
