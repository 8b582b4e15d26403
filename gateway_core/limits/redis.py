"""Counters in Redis, shared by every worker and replica: one atomic Lua script per batch of
operations.

Keys of one scope share the hash tag ``{scope}``, so on Redis Cluster the operations of one scope
are one script on one slot. The script mirrors :mod:`gateway_core.limits.windows` exactly; the
gateway's clock is passed in (replicas' clocks are assumed synchronised, as NTP keeps them). Every key
expires once it no longer matters: a rate window when it drained, a calendar counter an hour after its
period ended (so late settlements still find it), the marker of a durable counter an hour after the
next period ended (so that period's first take knows this one was counted), a concurrency set with
its last lease. Expiries are relative to the gateway's clock, so a skew between it and Redis's clock
does not matter.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gateway_core.limits.windows import (
    EPSILON,
    Verdict,
    Window,
    calendar_period,
    period_bounds,
    verdict_of,
)

if TYPE_CHECKING:
    from gateway_core.store.kv import SharedRedis

#: Seconds a calendar counter outlives its period.
PERIOD_GRACE_SECONDS = 3600
#: Longest a settlement waits for a take to share its round trip with.
SETTLE_DELAY_SECONDS = 0.02

# One script runs every operation of a batch, in order. ARGV: now, epsilon, then the operations, each
# a letter and its arguments; each takes its keys from KEYS in turn.
#   T n (kind limit span amount since)*n
#                                     take n windows, all or nothing: {allowed, refused index (0 =
#                                     none; negative: that durable window is unseeded and nothing was
#                                     taken), state of each window as a string}. kind: "r" rolling
#                                     (span = seconds), "c" calendar (span = expiry as epoch seconds;
#                                     0 = never), "d" durable calendar (two more keys: its marker and
#                                     the previous period's; since = the marker's expiry, 0 = never).
#   A kind limit span delta at       adjust one window, never refused: 1. A durable window (its
#                                     marker is a second key) is adjusted only when its marker was
#                                     set before ``at``, the take being corrected.
#   S amount span since              seed a durable window (keys: counter, marker) unless its marker
#                                     exists: 1 when seeded, 0 when it was already
#   Q limit lease token              take a concurrency slot: 1, or 0 when all are held
#   R token                          release a slot: 1
# A durable window's marker holds the clock time from which its store counted everything: set when it
# is seeded, or at the first take of a period when the previous period's marker shows the store
# counted that one (a new period, not a lost one).
_BATCH = """
local now = tonumber(ARGV[1])
local eps = tonumber(ARGV[2])
local out = {}
local k = 0
local a = 2
local function expire_at(key, at)
  if at > 0 then redis.call('EXPIRE', key, math.max(math.ceil(at - now), 1)) end
end
while a < #ARGV do
  local op = ARGV[a + 1]
  if op == 'T' then
    local n = tonumber(ARGV[a + 2])
    a = a + 2
    local states, keys, markers = {}, {}, {}
    local refused, unseeded = 0, 0
    for i = 1, n do
      local base = a + (i - 1) * 5
      local kind, limit = ARGV[base + 1], tonumber(ARGV[base + 2])
      local span, amount = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
      k = k + 1
      keys[i] = KEYS[k]
      local raw = redis.call('GET', keys[i])
      local ok
      if kind == 'r' then
        local tat = now
        if raw then tat = math.max(tonumber(raw), now) end
        states[i] = tat
        if limit <= 0 then
          ok = false
        else
          local after = tat + amount * span / limit
          ok = (after - now <= span + eps) and (amount > 0 or tat - now < span - eps)
        end
      else
        if kind == 'd' then
          if redis.call('EXISTS', KEYS[k + 1]) == 0 then
            if redis.call('EXISTS', KEYS[k + 2]) == 0 then
              if unseeded == 0 then unseeded = i end
            else
              markers[i] = {KEYS[k + 1], tonumber(ARGV[base + 5])}
            end
          end
          k = k + 2
        end
        local used = tonumber(raw or '0')
        states[i] = used
        ok = limit > 0 and used + amount <= limit and (amount > 0 or used < limit)
      end
      if not ok and refused == 0 then refused = i end
    end
    if unseeded > 0 then
      refused = -unseeded
    elseif refused == 0 then
      for i = 1, n do
        local base = a + (i - 1) * 5
        local kind, limit = ARGV[base + 1], tonumber(ARGV[base + 2])
        local span, amount = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
        if amount > 0 then
          if kind == 'r' then
            states[i] = states[i] + amount * span / limit
            redis.call('SET', keys[i], string.format('%.17g', states[i]),
              'PX', math.ceil((states[i] - now) * 1000) + 1)
          else
            states[i] = redis.call('INCRBY', keys[i], amount)
            expire_at(keys[i], span)
          end
        end
        if markers[i] then
          redis.call('SET', markers[i][1], string.format('%.17g', now))
          expire_at(markers[i][1], markers[i][2])
        end
      end
    end
    local result = {refused == 0 and 1 or 0, refused}
    for i = 1, n do result[#result + 1] = string.format('%.17g', states[i]) end
    out[#out + 1] = result
    a = a + n * 5
  elseif op == 'A' then
    local key, kind = KEYS[k + 1], ARGV[a + 2]
    local limit, span, delta = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
    local raw = redis.call('GET', key)
    if kind == 'd' then
      local since = redis.call('GET', KEYS[k + 2])
      if not since or tonumber(ARGV[a + 6]) < tonumber(since) then delta = 0 end
      k = k + 1
    end
    if delta ~= 0 and (raw or delta > 0) then
      if kind == 'r' then
        if limit > 0 then
          local tat = now
          if raw then tat = math.max(tonumber(raw), now) end
          tat = math.max(tat + delta * span / limit, now)
          if tat <= now then
            redis.call('DEL', key)
          else
            redis.call('SET', key, string.format('%.17g', tat), 'PX', math.ceil((tat - now) * 1000) + 1)
          end
        end
      elseif delta < 0 then
        redis.call('SET', key, math.max(tonumber(raw) + delta, 0), 'KEEPTTL')
      else
        redis.call('INCRBY', key, delta)
        expire_at(key, span)
      end
    end
    out[#out + 1] = 1
    k = k + 1
    a = a + 6
  elseif op == 'S' then
    if redis.call('EXISTS', KEYS[k + 2]) == 1 then
      out[#out + 1] = 0
    else
      redis.call('SET', KEYS[k + 1], ARGV[a + 2])
      expire_at(KEYS[k + 1], tonumber(ARGV[a + 3]))
      redis.call('SET', KEYS[k + 2], string.format('%.17g', now))
      expire_at(KEYS[k + 2], tonumber(ARGV[a + 4]))
      out[#out + 1] = 1
    end
    k = k + 2
    a = a + 4
  elseif op == 'Q' then
    local key, limit = KEYS[k + 1], tonumber(ARGV[a + 2])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= limit then
      out[#out + 1] = 0
    else
      redis.call('ZADD', key, now + tonumber(ARGV[a + 3]), ARGV[a + 4])
      local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      redis.call('PEXPIRE', key, math.ceil((tonumber(last[2]) - now) * 1000) + 1)
      out[#out + 1] = 1
    end
    k = k + 1
    a = a + 4
  elseif op == 'R' then
    redis.call('ZREM', KEYS[k + 1], ARGV[a + 2])
    out[#out + 1] = 1
    k = k + 1
    a = a + 2
  else
    return redis.error_reply('unknown counter operation ' .. tostring(op))
  end
end
return out
"""

_EPSILON = repr(EPSILON)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def hash_tag(scope: str) -> str:
    """The scope as a hash tag: braces inside it would end the tag early, so they are replaced."""
    return "{" + scope.replace("{", "(").replace("}", ")") + "}"


def verdicts_of(answer: Any, requests: Sequence[tuple[str, Sequence[Window]]], now: float) -> list[Verdict]:
    """The verdicts of a take over several scopes (see :meth:`RedisCounters.take_soon`): one per
    scope when all were allowed, else those up to the refusing scope's, which is last."""
    answered = int(answer[1])
    refused = abs(answered) - 1
    states = [float(_text(value)) for value in answer[2:]]
    verdicts: list[Verdict] = []
    first = 0
    for scope, windows in requests:
        last = first + len(windows)
        if 0 <= refused < last:
            index = refused - first
            verdicts.append(
                verdict_of(scope, windows, states[first:last], index, now, "redis", unseeded=answered < 0)
            )
            break
        verdicts.append(verdict_of(scope, windows, states[first:last], None, now, "redis"))
        first = last
    return verdicts


class Batch:
    """Operations bound for one Redis node, sent as one script call."""

    __slots__ = ("args", "futures", "keys", "now", "timer", "urgent")

    def __init__(self) -> None:
        #: The clock time the script runs with, set when the batch is sent.
        self.now = 0.0
        self.keys: list[str] = []
        self.args: list[Any] = ["", _EPSILON]
        self.futures: list[asyncio.Future[Any]] = []
        #: Whether someone waits for an answer (a take), so the batch goes out this loop turn.
        self.urgent = False
        self.timer: asyncio.TimerHandle | None = None


class RedisCounters:
    """The counter store shared through Redis; calls raise ``RedisUnavailable`` during an outage.

    Operations are batched. Takes and slot acquisitions started during one turn of the event loop
    (by any request) go out in one script call at the end of that turn, so concurrent requests and
    the several policies of one request share a round trip. Settlements (adjustments and releases)
    nobody waits on wait up to :data:`SETTLE_DELAY_SECONDS` for such a batch to join, so a busy
    worker sends them with the next request's checks. On Redis Cluster a batch holds the operations
    of one scope (one hash slot); elsewhere all of them.
    """

    backend = "redis"

    def __init__(
        self, redis: SharedRedis, *, prefix: str = "lockgate:limits", clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        #: Whether one script may touch keys of several scopes (not on Redis Cluster).
        self.spans_scopes = not redis.config.cluster
        self._script = redis.script(_BATCH)
        self._open: dict[str, Batch] = {}
        self._sending: set[asyncio.Task[None]] = set()
        #: Script calls made (each one round trip to Redis), for tests and benchmarks.
        self.round_trips = 0

    # --- batching ---------------------------------------------------------------------------------

    def _batch(self, scope: str, *, urgent: bool) -> Batch:
        """The open batch an operation on ``scope`` joins: sent at the end of this loop turn once an
        urgent operation joined it, else after :data:`SETTLE_DELAY_SECONDS`."""
        tag = "" if self.spans_scopes else scope
        batch = self._open.get(tag)
        loop = asyncio.get_running_loop()
        if batch is None:
            batch = self._open[tag] = Batch()
            if not urgent:
                batch.timer = loop.call_later(SETTLE_DELAY_SECONDS, self._send_batch, tag, batch)
        if urgent and not batch.urgent:
            batch.urgent = True
            if batch.timer is not None:
                batch.timer.cancel()
                batch.timer = None
            loop.call_soon(self._send_batch, tag, batch)
        return batch

    def _add(self, batch: Batch, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        batch.keys += keys
        batch.args += args
        batch.futures.append(future)
        return future

    def _send_batch(self, tag: str, batch: Batch) -> None:
        if self._open.get(tag) is not batch:
            return  # already sent
        del self._open[tag]
        if batch.timer is not None:
            batch.timer.cancel()
        batch.now = self.clock()
        batch.args[0] = repr(batch.now)
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: Batch) -> None:
        self.round_trips += 1
        try:
            answers = await self._script(batch.keys, batch.args)
        except BaseException as exc:
            for future in batch.futures:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for future, answer in zip(batch.futures, answers, strict=True):
            if not future.done():
                future.set_result(answer)

    async def flush(self) -> None:
        """Send what is batched now and wait for every batch under way (at shutdown)."""
        for tag, batch in list(self._open.items()):
            self._send_batch(tag, batch)
        if self._sending:
            await asyncio.wait(set(self._sending))

    # --- keys -------------------------------------------------------------------------------------

    def _window_key(self, scope: str, window: Window, at: float) -> tuple[str, float]:
        """The key of ``window`` and its span argument (seconds, or the counter's expiry; 0 = never)."""
        key = f"{self.prefix}:{hash_tag(scope)}:{window.name}"
        if window.period is None:
            assert isinstance(window.seconds, float | int)
            return key, float(window.seconds)
        period_id, ends = period_bounds(window.period, at)
        return f"{key}:{period_id}", 0.0 if ends is None else ends + PERIOD_GRACE_SECONDS

    def _markers(self, scope: str, window: Window, at: float) -> tuple[str, str, float]:
        """A durable window's marker, the previous period's marker (the same for a total) and the
        marker's expiry: the end of the next period, so the next period can tell a first use."""
        assert window.period is not None
        key = f"{self.prefix}:{hash_tag(scope)}:{window.name}"
        period = calendar_period(window.period, at)
        if period is None:
            return f"{key}:total:since", f"{key}:total:since", 0.0
        since = period.next_end + PERIOD_GRACE_SECONDS
        return f"{key}:{period.id}:since", f"{key}:{period.previous_id}:since", since

    def _slots_key(self, scope: str, name: str) -> str:
        return f"{self.prefix}:{hash_tag(scope)}:slots:{name}"

    # --- operations started now, answered with the batch --------------------------------------------

    def take_soon(
        self, requests: Sequence[tuple[str, Sequence[Window]]]
    ) -> tuple[asyncio.Future[Any], Batch]:
        """Take the windows of several scopes at once, all or nothing, in this turn's batch.

        Answers the operation's future and its batch, whose ``now`` (set once it is sent) goes to
        :func:`verdicts_of` with the answer. Several scopes need :attr:`spans_scopes` (one scope
        always works); every scope must have windows.
        """
        if len(requests) > 1 and not self.spans_scopes:
            raise ValueError("a take over several scopes needs Redis without Cluster")
        batch = self._batch(requests[0][0], urgent=True)
        now = self.clock()
        keys: list[str] = []
        args: list[Any] = ["T", sum(len(windows) for _, windows in requests)]
        for scope, windows in requests:
            for window in windows:
                key, span = self._window_key(scope, window, now)
                keys.append(key)
                if window.durable and window.period is not None:
                    marker, previous, since = self._markers(scope, window, now)
                    keys += (marker, previous)
                    args += ["d", window.limit, repr(span), window.amount, repr(since)]
                else:
                    args += ["r" if window.rolling else "c", window.limit, repr(span), window.amount, 0]
        return self._add(batch, keys, args), batch

    def adjust_soon(
        self, scope: str, window: Window, delta: int, at: float | None = None, *, urgent: bool = False
    ) -> asyncio.Future[Any]:
        """Add ``delta`` to a window (``at``: the take's time, for its period), in the next batch
        (``urgent``: this loop turn's)."""
        batch = self._batch(scope, urgent=urgent)
        now = self.clock()
        when = now if at is None or window.rolling else at
        key, span = self._window_key(scope, window, when)
        keys = [key]
        kind = "r" if window.rolling else "c"
        if window.durable and window.period is not None:
            kind = "d"
            keys.append(self._markers(scope, window, when)[0])
        return self._add(batch, keys, ["A", kind, window.limit, repr(span), delta, repr(when)])

    def seed_soon(self, scope: str, window: Window, amount: int, at: float) -> asyncio.Future[Any]:
        """Set a durable window of the period ``at`` falls in to ``amount`` unless its marker shows
        it counted already (another worker or replica seeded it first), in this turn's batch:
        answers 1 when seeded, 0 when it was already."""
        batch = self._batch(scope, urgent=True)
        key, span = self._window_key(scope, window, at)
        marker, _, since = self._markers(scope, window, at)
        return self._add(batch, [key, marker], ["S", amount, repr(span), repr(since)])

    def release_soon(self, scope: str, name: str, token: str, *, urgent: bool = False) -> asyncio.Future[Any]:
        """Free a slot in the next batch (``urgent``: this loop turn's)."""
        return self._add(self._batch(scope, urgent=urgent), [self._slots_key(scope, name)], ["R", token])

    # --- the counter store interface ---------------------------------------------------------------

    async def take(self, scope: str, windows: Sequence[Window]) -> Verdict:
        requests = [(scope, windows)]
        future, batch = self.take_soon(requests)
        answer = await future
        return verdicts_of(answer, requests, batch.now)[0]

    async def adjust(self, scope: str, window: Window, delta: int, at: float | None = None) -> None:
        if delta != 0:
            await self.adjust_soon(scope, window, delta, at, urgent=True)

    async def acquire(self, scope: str, name: str, limit: int, lease_seconds: float) -> str | None:
        token = secrets.token_hex(8)
        batch = self._batch(scope, urgent=True)
        args = ["Q", limit, repr(lease_seconds), token]
        taken = await self._add(batch, [self._slots_key(scope, name)], args)
        return token if int(taken) else None

    async def release(self, scope: str, name: str, token: str) -> None:
        await self.release_soon(scope, name, token, urgent=True)
