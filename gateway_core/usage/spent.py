"""What keys, users or organizations spent in a period, read from the usage records.

Budgets rebuild a counter their store lost (a Redis restarted without persistence) from it: the
requests that reached a provider, their tokens and their cost, from the stored records plus the
records the caller knows are not stored yet (``UsageLog.unstored``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from gateway_core.store.database import Database
from gateway_core.usage.records import COST_QUANTUM, UsageEntry
from gateway_core.usage.storage import Params, as_utc

#: The record columns a scope is matched on.
Owner = Literal["key_id", "user_id", "org_id"]


@dataclass(slots=True)
class Spent:
    """The totals of some usage records."""

    #: Records of requests that reached a provider (at least one upstream call).
    requests: int = 0
    tokens: int = 0
    #: USD (records of an unknown price count nothing).
    cost: Decimal = Decimal(0)

    def add(self, entry: UsageEntry) -> None:
        self.requests += 1 if entry.attempts > 0 else 0
        self.tokens += entry.total_tokens
        self.cost += entry.cost or 0


async def spent(
    database: Database,
    owner: Owner,
    ids: Collection[str],
    start: datetime | None,
    end: datetime | None,
    unstored: Iterable[UsageEntry] = (),
) -> Spent:
    """The totals of the records whose ``owner`` column is one of ``ids``, created from ``start`` to
    before ``end`` (None: unbounded), plus those of ``unstored`` that match and are not stored.

    One statement reads the totals and which of ``unstored`` are stored (one snapshot of the table),
    so a record the usage writer commits meanwhile counts once. Raises ``DatabaseUnavailable``
    during an outage.
    """
    total = Spent()
    if not ids:
        return total
    chosen = set(ids)
    pending = {
        entry.event_id: entry
        for entry in unstored
        if getattr(entry, owner) in chosen
        and (start is None or as_utc(entry.created_at) >= start)
        and (end is None or as_utc(entry.created_at) < end)
    }
    params = Params(database.dialect)
    conditions = [f"{owner} IN ({params.take(len(chosen))})"]
    values: list[Any] = sorted(chosen)
    if start is not None:
        conditions.append(f"created_at >= {params.one()}")
        values.append(start)
    if end is not None:
        conditions.append(f"created_at < {params.one()}")
        values.append(end)
    where = " AND ".join(conditions)
    sql = (
        "SELECT SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END) AS requests, "  # noqa: S608 (fixed names)
        f"SUM(total_tokens) AS tokens, SUM(cost) AS cost, NULL AS event_id FROM usage_records WHERE {where}"
    )
    if pending:
        sql += (
            " UNION ALL SELECT NULL, NULL, NULL, event_id FROM usage_records "  # noqa: S608 (fixed names)
            f"WHERE event_id IN ({params.take(len(pending))})"
        )
        values += list(pending)
    for row in await database.run(database.connection().execute_query_dict(sql, values)):
        if row["event_id"] is not None:
            pending.pop(str(row["event_id"]), None)  # stored already: counted in the totals
            continue
        total.requests += int(row["requests"] or 0)
        total.tokens += int(row["tokens"] or 0)
        # SQLite sums the cost column as floats: back to the column's 8 decimals.
        total.cost += Decimal(str(row["cost"] or 0)).quantize(COST_QUANTUM)
    for entry in pending.values():
        total.add(entry)
    return total


async def organization_tree(database: Database, org_id: str) -> set[str]:
    """``org_id`` and every organization below it (raises ``DatabaseUnavailable`` during an outage)."""
    rows = await database.run(
        database.connection().execute_query_dict("SELECT id, parent_id FROM organizations")
    )
    children: dict[str, list[str]] = {}
    for row in rows:
        if row["parent_id"] is not None:
            children.setdefault(str(row["parent_id"]), []).append(str(row["id"]))
    found = {org_id}
    waiting = [org_id]
    while waiting:
        for child in children.get(waiting.pop(), ()):
            if child not in found:
                found.add(child)
                waiting.append(child)
    return found
