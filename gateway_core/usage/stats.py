"""Usage statistics over a time range, read from the hourly rollups (never from the raw records).

Totals per hour or day and per model, provider, key, user or organization: requests, errors, tokens,
cost, requests of unknown price, and latency (average, and p50/p95 estimated from the rollups'
histograms). The range is hour-granular: ``start`` is rounded down to its hour and the hours starting
before ``end`` are counted.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from gateway_core.store.database import Database
from gateway_core.usage import histogram
from gateway_core.usage.records import COST_QUANTUM
from gateway_core.usage.storage import Params, as_utc, hour_of

Interval = Literal["hour", "day", "none"]
GroupBy = Literal["model", "provider", "key", "user", "org", "none"]

#: The rollup column of each ``group_by`` value.
GROUP_COLUMNS: dict[str, str] = {
    "model": "model",
    "provider": "provider",
    "key": "key_id",
    "user": "user_id",
    "org": "org_id",
}
_SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost",
    "unknown_cost_requests",
    "latency_sum_ms",
)


@dataclass(frozen=True, slots=True)
class StatsFilter:
    """Which rollups count: a time range, and optionally dimensions (``org_ids``: an org tree)."""

    start: datetime
    end: datetime
    model: str | None = None
    provider: str | None = None
    key_id: str | None = None
    user_id: str | None = None
    org_id: str | None = None
    #: Only these organizations (an organization-bound admin's tree); None for all.
    org_ids: Collection[str] | None = None


@dataclass(slots=True)
class StatsRow:
    """The totals of one period and group."""

    period: datetime | None
    group: str | None
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: Decimal = Decimal(0)
    unknown_cost_requests: int = 0
    latency_sum_ms: int = 0
    latency_histogram: list[int] = field(default_factory=histogram.empty)

    @property
    def latency_avg_ms(self) -> float | None:
        return self.latency_sum_ms / self.requests if self.requests else None

    @property
    def latency_p50_ms(self) -> float | None:
        return histogram.percentile(self.latency_histogram, 0.50)

    @property
    def latency_p95_ms(self) -> float | None:
        return histogram.percentile(self.latency_histogram, 0.95)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON: cost as a string of 8 decimals, latencies rounded to 0.1 ms."""
        return {
            "period": self.period.isoformat() if self.period is not None else None,
            "group": self.group,
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cost": f"{self.cost:f}",
            "unknown_cost_requests": self.unknown_cost_requests,
            "latency_avg_ms": _round(self.latency_avg_ms),
            "latency_p50_ms": _round(self.latency_p50_ms),
            "latency_p95_ms": _round(self.latency_p95_ms),
        }


async def usage_stats(
    database: Database, where: StatsFilter, *, interval: Interval = "none", group_by: GroupBy = "none"
) -> list[StatsRow]:
    """The totals per period and group, ordered by period, then by requests (most first).

    Raises ``DatabaseUnavailable`` during an outage.
    """
    if where.org_ids is not None and not where.org_ids:
        return []
    connection = database.connection()
    dialect = database.dialect
    params = Params(dialect)
    conditions, values = _conditions(where, params)
    period = _period_expression(interval, dialect)
    group = f"r.{GROUP_COLUMNS[group_by]}" if group_by != "none" else None
    keys = [f"{period} AS period"] if period else []
    keys += [f"{group} AS grp"] if group else []
    group_by_sql = f" GROUP BY {', '.join(k.split(' AS ')[0] for k in keys)}" if keys else ""
    sums = ", ".join(f"SUM(r.{name}) AS {name}" for name in _SUMS)
    sql = (
        f"SELECT {', '.join([*keys, sums])} FROM usage_rollups r "  # noqa: S608 (fixed names)
        f"WHERE {conditions}{group_by_sql}"
    )
    rows: dict[tuple[datetime | None, str | None], StatsRow] = {}
    for row in await database.run(connection.execute_query_dict(sql, values)):
        if row["requests"] is None:  # no rollup at all: SUM over nothing
            continue
        key = (_period(row.get("period"), interval), _group(row.get("grp")))
        rows[key] = StatsRow(
            period=key[0],
            group=key[1],
            requests=int(row["requests"]),
            errors=int(row["errors"]),
            prompt_tokens=int(row["prompt_tokens"]),
            completion_tokens=int(row["completion_tokens"]),
            cached_tokens=int(row["cached_tokens"]),
            cost=_money(row["cost"]),
            unknown_cost_requests=int(row["unknown_cost_requests"]),
            latency_sum_ms=int(row["latency_sum_ms"]),
        )
    if rows:
        await _fill_histograms(database, where, interval, group, period, rows)
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(rows.values(), key=lambda r: (r.period or epoch, -r.requests, r.group or ""))


async def _fill_histograms(
    database: Database,
    where: StatsFilter,
    interval: Interval,
    group: str | None,
    period: str | None,
    rows: dict[tuple[datetime | None, str | None], StatsRow],
) -> None:
    """Add the rollups' latency histograms up per period and group (in the database)."""
    params = Params(database.dialect)
    conditions, values = _conditions(where, params)
    keys = [f"{period} AS period"] if period else []
    keys += [f"{group} AS grp"] if group else []
    if database.dialect == "postgres":
        source = (
            "usage_rollups r CROSS JOIN LATERAL "
            "jsonb_array_elements_text(r.latency_histogram) WITH ORDINALITY AS h(value, position)"
        )
        index, count = "h.position - 1", "SUM(CAST(h.value AS BIGINT))"
    else:
        source = "usage_rollups r, json_each(r.latency_histogram) h"
        index, count = "CAST(h.key AS INTEGER)", "SUM(h.value)"
    grouping = ", ".join([*(k.split(" AS ")[0] for k in keys), index])
    sql = (
        f"SELECT {', '.join([*keys, f'{index} AS idx', f'{count} AS n'])} "  # noqa: S608 (fixed names)
        f"FROM {source} WHERE {conditions} GROUP BY {grouping}"
    )
    for row in await database.run(database.connection().execute_query_dict(sql, values)):
        target = rows.get((_period(row.get("period"), interval), _group(row.get("grp"))))
        position = int(row["idx"])
        if target is not None and 0 <= position < histogram.BUCKETS:
            target.latency_histogram[position] += int(row["n"] or 0)


def _conditions(where: StatsFilter, params: Params) -> tuple[str, list[Any]]:
    conditions = [f"r.bucket >= {params.one()}", f"r.bucket < {params.one()}"]
    values: list[Any] = [hour_of(where.start), where.end.astimezone(UTC)]
    for column, value in (
        ("model", where.model),
        ("provider", where.provider),
        ("key_id", where.key_id),
        ("user_id", where.user_id),
        ("org_id", where.org_id),
    ):
        if value is not None:
            conditions.append(f"r.{column} = {params.one()}")
            values.append(value)
    if where.org_ids is not None:
        orgs = sorted(where.org_ids)
        conditions.append(f"r.org_id IN ({params.take(len(orgs))})")
        values += orgs
    return " AND ".join(conditions), values


def _period_expression(interval: Interval, dialect: str) -> str | None:
    if interval == "hour":
        return "r.bucket"
    if interval == "day":
        return (
            "date_trunc('day', r.bucket AT TIME ZONE 'UTC')"
            if dialect == "postgres"
            else "substr(r.bucket, 1, 10)"
        )
    return None


def _period(value: Any, interval: Interval) -> datetime | None:
    if value is None or interval == "none":
        return None
    moment = as_utc(value)
    return moment.replace(hour=0) if interval == "day" else moment


def _group(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _money(value: Any) -> Decimal:
    if value is None:
        return Decimal(0).quantize(COST_QUANTUM)
    return Decimal(str(value)).quantize(COST_QUANTUM)


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A moment from ``24h``, ``7d``, ``90m``, ``2w`` (that long ago) or an ISO date/time (UTC unless
    it names a zone); raises ``ValueError``."""
    now = now or datetime.now(UTC)
    text = text.strip()
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if len(text) > 1 and text[-1].lower() in units and text[:-1].isdigit():
        return now - timedelta(**{units[text[-1].lower()]: int(text[:-1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (24h, 7d) nor an ISO date or time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
