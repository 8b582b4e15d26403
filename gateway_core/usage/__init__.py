"""Usage accounting: the usage log (one record per request, written in batches), hourly rollups,
statistics and retention. See ``docs/usage.md``."""

from __future__ import annotations

from gateway_core.usage.log import UsageCounters, UsageLog
from gateway_core.usage.records import UsageEntry, entry_from_context
from gateway_core.usage.stats import StatsFilter, StatsRow, usage_stats

__all__ = [
    "StatsFilter",
    "StatsRow",
    "UsageCounters",
    "UsageEntry",
    "UsageLog",
    "entry_from_context",
    "usage_stats",
]
