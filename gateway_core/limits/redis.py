"""Counters in Redis, shared by every worker and replica: one atomic Lua script per operation.

Keys of one scope share the hash tag ``{scope}``, so a take over several windows of a scope is one
script on one Redis Cluster slot. The scripts mirror :mod:`gateway_core.limits.windows` exactly; the
gateway's clock is passed in (replicas' clocks are assumed synchronised, as NTP keeps them). Every key
expires once it no longer matters: a rate window when it drained, a calendar counter an hour after its
period ended (so late settlements still find it), a concurrency set with its last lease. Expiries
are relative to the gateway's clock, so a skew between it and Redis's clock does not matter.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gateway_core.limits.windows import EPSILON, Verdict, Window, period_bounds, verdict_of

if TYPE_CHECKING:
    from gateway_core.store.kv import SharedRedis

#: Seconds a calendar counter outlives its period.
PERIOD_GRACE_SECONDS = 3600

# ARGV: now, epsilon, then per window: kind ("r" rolling, "c" calendar), limit, seconds (rolling) or
# expiry as epoch seconds (calendar; 0 = never), amount.
# Returns {allowed, refused index (0 = none), state of each window as a string}.
_TAKE = """
local now = tonumber(ARGV[1])
local eps = tonumber(ARGV[2])
local states = {}
local refused = 0
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  local kind, limit = ARGV[base + 1], tonumber(ARGV[base + 2])
  local span, amount = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local raw = redis.call('GET', KEYS[i])
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
  for i = 1, #KEYS do
    local base = 2 + (i - 1) * 4
    local kind, limit = ARGV[base + 1], tonumber(ARGV[base + 2])
    local span, amount = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
    if amount > 0 then
      if kind == 'r' then
        states[i] = states[i] + amount * span / limit
        redis.call('SET', KEYS[i], string.format('%.17g', states[i]),
          'PX', math.ceil((states[i] - now) * 1000) + 1)
      else
        states[i] = redis.call('INCRBY', KEYS[i], amount)
        if span > 0 then redis.call('EXPIRE', KEYS[i], math.max(math.ceil(span - now), 1)) end
      end
    end
  end
end
local out = {refused == 0 and 1 or 0, refused}
for i = 1, #KEYS do out[#out + 1] = string.format('%.17g', states[i]) end
return out
"""

# ARGV: now, kind, limit, seconds (rolling) or expiry (calendar; 0 = never), delta.
_ADJUST = """
local now, kind = tonumber(ARGV[1]), ARGV[2]
local limit, span, delta = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local raw = redis.call('GET', KEYS[1])
if not raw and delta < 0 then return 0 end
if kind == 'r' then
  if limit <= 0 then return 0 end
  local tat = now
  if raw then tat = math.max(tonumber(raw), now) end
  tat = math.max(tat + delta * span / limit, now)
  if tat <= now then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil((tat - now) * 1000) + 1)
  end
elseif delta < 0 then
  redis.call('SET', KEYS[1], math.max(tonumber(raw) + delta, 0), 'KEEPTTL')
else
  redis.call('INCRBY', KEYS[1], delta)
  if span > 0 then redis.call('EXPIRE', KEYS[1], math.max(math.ceil(span - now), 1)) end
end
return 1
"""

# ARGV: now, limit, lease seconds, token. Returns 1 when the slot was taken, else 0.
_ACQUIRE = """
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(last[2]) - now) * 1000) + 1)
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def hash_tag(scope: str) -> str:
    """The scope as a hash tag: braces inside it would end the tag early, so they are replaced."""
    return "{" + scope.replace("{", "(").replace("}", ")") + "}"


class RedisCounters:
    """The counter store shared through Redis; calls raise ``RedisUnavailable`` during an outage."""

    backend = "redis"

    def __init__(
        self, redis: SharedRedis, *, prefix: str = "lockgate:limits", clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        self._take = redis.script(_TAKE)
        self._adjust = redis.script(_ADJUST)
        self._acquire = redis.script(_ACQUIRE)

    def _window_key(self, scope: str, window: Window, at: float) -> tuple[str, float]:
        """The key of ``window`` and its span argument (seconds, or the counter's expiry; 0 = never)."""
        key = f"{self.prefix}:{hash_tag(scope)}:{window.name}"
        if window.period is None:
            assert isinstance(window.seconds, float | int)
            return key, float(window.seconds)
        period_id, ends = period_bounds(window.period, at)
        return f"{key}:{period_id}", 0.0 if ends is None else ends + PERIOD_GRACE_SECONDS

    async def take(self, scope: str, windows: Sequence[Window]) -> Verdict:
        now = self.clock()
        keys: list[str] = []
        args: list[Any] = [repr(now), repr(EPSILON)]
        for window in windows:
            key, span = self._window_key(scope, window, now)
            keys.append(key)
            args += ["r" if window.rolling else "c", window.limit, repr(span), window.amount]
        answer = await self._take(keys, args)
        allowed, refused = int(answer[0]), int(answer[1])
        states = [float(_text(value)) for value in answer[2:]]
        return verdict_of(scope, windows, states, None if allowed else refused - 1, now, "redis")

    async def adjust(self, scope: str, window: Window, delta: int, at: float | None = None) -> None:
        if delta == 0:
            return
        now = self.clock()
        key, span = self._window_key(scope, window, now if at is None or window.rolling else at)
        kind = "r" if window.rolling else "c"
        await self._adjust([key], [repr(now), kind, window.limit, repr(span), delta])

    def _slots_key(self, scope: str, name: str) -> str:
        return f"{self.prefix}:{hash_tag(scope)}:slots:{name}"

    async def acquire(self, scope: str, name: str, limit: int, lease_seconds: float) -> str | None:
        token = secrets.token_hex(8)
        args = [repr(self.clock()), limit, repr(lease_seconds), token]
        taken = await self._acquire([self._slots_key(scope, name)], args)
        return token if int(taken) else None

    async def release(self, scope: str, name: str, token: str) -> None:
        key = self._slots_key(scope, name)
        await self.redis.run(lambda client: client.zrem(key, [token]))
