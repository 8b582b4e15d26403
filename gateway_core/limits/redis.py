"""Counters in Redis, shared by every worker and replica: one atomic Lua script per batch of
operations.

Keys of one scope share the hash tag ``{scope}``, so on Redis Cluster the operations of one scope
are one script on one slot. The script mirrors :mod:`gateway_core.limits.windows` exactly; the
gateway's clock is passed in (replicas' clocks are assumed synchronised, as NTP keeps them). Every key
expires once it no longer matters: a rate window when it drained, a calendar counter an hour after its
period ended (so late settlements still find it), a concurrency set with its last lease. Expiries
are relative to the gateway's clock, so a skew between it and Redis's clock does not matter.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gateway_core.limits.windows import EPSILON, Verdict, Window, period_bounds, verdict_of

if TYPE_CHECKING:
    from gateway_core.store.kv import SharedRedis

#: Seconds a calendar counter outlives its period.
PERIOD_GRACE_SECONDS = 3600
#: Longest a settlement waits for a take to share its round trip with.
SETTLE_DELAY_SECONDS = 0.02

# One script runs every operation of a batch, in order. ARGV: now, epsilon, then the operations, each
# a letter and its arguments; each takes its keys from KEYS in turn.
#   T n (kind limit span amount)*n   take n windows, all or nothing: {allowed, refused index (0 =
#                                     none), state of each window as a string}. kind: "r" rolling
#                                     (span = seconds), "c" calendar (span = expiry as epoch seconds;
#                                     0 = never).
#   A kind limit span delta          adjust one window, never refused: 1
#   Q limit lease token              take a concurrency slot: 1, or 0 when all are held
#   R token                          release a slot: 1
_BATCH = """
local now = tonumber(ARGV[1])
local eps = tonumber(ARGV[2])
local out = {}
local k = 0
local a = 2
while a < #ARGV do
  local op = ARGV[a + 1]
  if op == 'T' then
    local n = tonumber(ARGV[a + 2])
    a = a + 2
    local states = {}
    local refused = 0
    for i = 1, n do
      local base = a + (i - 1) * 4
      local kind, limit = ARGV[base + 1], tonumber(ARGV[base + 2])
      local span, amount = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
      local raw = redis.call('GET', KEYS[k + i])
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
        local used = tonumber(raw or '0')
        states[i] = used
        ok = limit > 0 and used + amount <= limit and (amount > 0 or used < limit)
      end
      if not ok and refused == 0 then refused = i end
    end
    if refused == 0 then
      for i = 1, n do
        local base = a + (i - 1) * 4
        local kind, limit = ARGV[base + 1], tonumber(ARGV[base + 2])
        local span, amount = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
        if amount > 0 then
          if kind == 'r' then
            states[i] = states[i] + amount * span / limit
            redis.call('SET', KEYS[k + i], string.format('%.17g', states[i]),
              'PX', math.ceil((states[i] - now) * 1000) + 1)
          else
            states[i] = redis.call('INCRBY', KEYS[k + i], amount)
            if span > 0 then redis.call('EXPIRE', KEYS[k + i], math.max(math.ceil(span - now), 1)) end
          end
        end
      end
    end
    local result = {refused == 0 and 1 or 0, refused}
    for i = 1, n do result[#result + 1] = string.format('%.17g', states[i]) end
    out[#out + 1] = result
    k = k + n
    a = a + n * 4
  elseif op == 'A' then
    local key, kind = KEYS[k + 1], ARGV[a + 2]
    local limit, span, delta = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
    local raw = redis.call('GET', key)
    if raw or delta > 0 then
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
        if span > 0 then redis.call('EXPIRE', key, math.max(math.ceil(span - now), 1)) end
      end
    end
    out[#out + 1] = 1
    k = k + 1
    a = a + 5
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
    refused = int(answer[1]) - 1
    states = [float(_text(value)) for value in answer[2:]]
    verdicts: list[Verdict] = []
    first = 0
    for scope, windows in requests:
        last = first + len(windows)
        if 0 <= refused < last:
            verdicts.append(verdict_of(scope, windows, states[first:last], refused - first, now, "redis"))
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
                args += ["r" if window.rolling else "c", window.limit, repr(span), window.amount]
        return self._add(batch, keys, args), batch

    def adjust_soon(
        self, scope: str, window: Window, delta: int, at: float | None = None, *, urgent: bool = False
    ) -> asyncio.Future[Any]:
        """Add ``delta`` to a window (``at``: the take's time, for its period), in the next batch
        (``urgent``: this loop turn's)."""
        batch = self._batch(scope, urgent=urgent)
        now = self.clock()
        key, span = self._window_key(scope, window, now if at is None or window.rolling else at)
        kind = "r" if window.rolling else "c"
        return self._add(batch, [key], ["A", kind, window.limit, repr(span), delta])

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
