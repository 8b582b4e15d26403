"""Shared counters for rate limits, quotas and budgets: rolling and calendar windows, concurrency
slots, in memory or in Redis (see :mod:`gateway_core.limits.windows` for the algorithms).

The gateway creates one store per worker, ``gateway.counters``; policies and other plugins use it::

    verdict = await gateway.counters.take("key:abc", [Window("requests", 60, 60), Window("tokens", 10_000, 60, 900)])
    if not verdict.allowed: ...          # verdict.refused, verdict.retry_after
    await gateway.counters.give_back("key:abc", window, 400, at=verdict.at, backend=verdict.backend)
"""

from gateway_core.limits.memory import MemoryCounters
from gateway_core.limits.outcome import reached_provider, tokens_used
from gateway_core.limits.redis import RedisCounters
from gateway_core.limits.store import Counters, Reservation, limits_unavailable
from gateway_core.limits.windows import Period, Verdict, Window, format_duration, period_bounds

__all__ = [
    "Counters",
    "MemoryCounters",
    "Period",
    "RedisCounters",
    "Reservation",
    "Verdict",
    "Window",
    "format_duration",
    "limits_unavailable",
    "period_bounds",
    "reached_provider",
    "tokens_used",
]
