"""``lockgate usage``: usage statistics from the database, as a table or JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from gateway_core.usage.stats import GroupBy, Interval, StatsFilter, StatsRow, parse_since, usage_stats

if TYPE_CHECKING:
    from gateway_core.config import GatewayConfig
    from gateway_core.store.database import Database

_BY = ("model", "provider", "key", "user", "org")
_COLUMNS = (
    ("requests", "requests"),
    ("errors", "errors"),
    ("prompt", "prompt_tokens"),
    ("completion", "completion_tokens"),
    ("cached", "cached_tokens"),
    ("cost_usd", "cost"),
    ("unpriced", "unknown_cost_requests"),
    ("p50_ms", "latency_p50_ms"),
    ("p95_ms", "latency_p95_ms"),
)


def add_usage_command(
    sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
) -> None:
    """Add ``usage`` to the ``lockgate`` parser's sub-commands."""
    usage = with_config(
        sub.add_parser("usage", help="usage statistics (requests, tokens, cost, latency) from the database")
    )
    usage.add_argument(
        "--since", default="24h", metavar="24h|7d|ISO", help="start: a duration ago or a date (default 24h)"
    )
    usage.add_argument(
        "--until", metavar="24h|7d|ISO", help="end (exclusive): a duration ago or a date (default now)"
    )
    usage.add_argument("--by", choices=_BY, help="one row per model, provider, key, user or organization")
    usage.add_argument("--interval", choices=("hour", "day"), help="one row per hour or day")
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    usage.set_defaults(run=cmd_usage)


def cmd_usage(args: argparse.Namespace) -> int:
    from gateway_core.cli import _with_database

    now = datetime.now(UTC)
    try:
        start = parse_since(args.since, now)
        end = parse_since(args.until, now) if args.until else now
    except ValueError as exc:
        print(f"lockgate: {exc}", file=sys.stderr)
        return 1
    if start > end:
        print("lockgate: --since must be before --until", file=sys.stderr)
        return 1
    interval: Interval = args.interval or "none"
    group_by: GroupBy = args.by or "none"

    async def work(config: GatewayConfig, database: Database) -> int:
        rows = await usage_stats(database, StatsFilter(start, end), interval=interval, group_by=group_by)
        if args.json:
            document = {
                "start": start.replace(minute=0, second=0, microsecond=0).isoformat(),
                "end": end.isoformat(),
                "interval": interval,
                "group_by": group_by,
                "data": [row.as_dict() for row in rows],
            }
            print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        else:
            print(render_table(rows, interval, group_by))
        return 0

    return _with_database(args, work)


def render_table(rows: list[StatsRow], interval: Interval, group_by: GroupBy) -> str:
    """The rows as an aligned text table (numbers right-aligned); a line saying so when there are none."""
    if not rows:
        return "no usage in this range"
    header: list[str] = []
    if interval != "none":
        header.append(interval)
    if group_by != "none":
        header.append(group_by)
    header += [title for title, _ in _COLUMNS]
    leading = len(header) - len(_COLUMNS)
    lines = []
    for row in rows:
        data = row.as_dict()
        cells: list[str] = []
        if interval != "none" and row.period is not None:
            cells.append(row.period.strftime("%Y-%m-%d %H:00" if interval == "hour" else "%Y-%m-%d"))
        if group_by != "none":
            cells.append(row.group or "-")
        for _, name in _COLUMNS:
            value = data[name]
            cells.append(_cell(value))
        lines.append(cells)
    widths = [max(len(cells[i]) for cells in (header, *lines)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i < leading else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join(line(cells) for cells in (header, *lines))


def _cell(value: object) -> str:
    """A table cell: latencies as whole milliseconds, costs in plain notation (never ``0E-8``)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}"
    if isinstance(value, Decimal):
        return f"{value:.6f}"
    return str(value)
