"""``/admin/api/usage``: the usage log's records and statistics (read-only).

Any logged-in user may read them; organization-bound users see only the usage of their organization
tree (records whose ``org_id`` is one of its organizations). Statistics come from the hourly rollups,
so they stay fast over months of records.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from tortoise.expressions import Q

from gateway_core.admin import schemas
from gateway_core.admin.api import Call, Operation, fetch_page, forbidden, unprocessable
from gateway_core.errors import GatewayError, bad_request
from gateway_core.store import models
from gateway_core.usage.stats import StatsFilter, usage_stats

#: The default range of the statistics: the last day.
DEFAULT_RANGE = timedelta(hours=24)


def _moment(value: datetime | None, param: str) -> datetime | None:
    """A query's date-time in UTC (UTC when it names no zone); 400 when it cannot be one."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise bad_request(f"{param}: out of range.", param=param) from None


async def _visible_orgs(call: Call, org_id: str | None) -> list[str] | None:
    """The organizations whose usage the caller may read (None: all); 403 for an ``org_id`` outside."""
    orgs = await call.user.orgs()
    if orgs is None:
        return None
    visible = sorted(str(org) for org in orgs)
    if org_id is not None and org_id not in visible:
        raise forbidden(
            "You can read only the usage of your organization and its descendants.", param="org_id"
        )
    return visible


def record_out(record: models.UsageRecord) -> dict[str, Any]:
    out = {name: getattr(record, name) for name in schemas.UsageRecord.model_fields}
    out["dlp_findings"] = _findings(record.dlp_findings)
    return out


def _findings(text: str | None) -> list[Any] | None:
    """The ``dlp_findings`` column as a list (None when no filter ran, or for a text that is not one)."""
    if text is None:
        return None
    try:
        findings = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return findings if isinstance(findings, list) else None


async def list_usage(call: Call) -> schemas.UsageRecordList:
    q: schemas.UsageQuery = call.query
    query = models.UsageRecord.all()
    orgs = await _visible_orgs(call, q.org_id)
    if orgs is not None:
        query = query.filter(org_id__in=orgs)
    start, end = _moment(q.from_, "from"), _moment(q.to, "to")
    if start is not None:
        query = query.filter(created_at__gte=start)
    if end is not None:
        query = query.filter(created_at__lt=end)
    for name in ("key_id", "user_id", "org_id", "model", "status"):
        value = getattr(q, name)
        if value is not None:
            query = query.filter(**{name: value})
    if q.dlp is not None:
        # With at least one finding: ``dlp_findings`` is ``[]`` when the filters found nothing.
        found = Q(dlp_findings__isnull=False) & ~Q(dlp_findings="[]")
        query = query.filter(found if q.dlp else ~found)
    order = ("created_at", "id") if q.order == "asc" else ("-created_at", "-id")
    rows, paging = await fetch_page(query, q, *order)
    return schemas.UsageRecordList(
        data=[schemas.UsageRecord.model_validate(record_out(row)) for row in rows], **paging
    )


async def usage_statistics(call: Call) -> schemas.UsageStats:
    q: schemas.UsageStatsQuery = call.query
    database = call.gateway.database
    if database is None:  # the admin API is disabled without one; kept for the type checker
        raise GatewayError(503, "No database is configured.", type="server_error")
    end = _moment(q.to, "to") or datetime.now(UTC)
    start = _moment(q.from_, "from")
    if start is None:
        start = end - min(DEFAULT_RANGE, end - datetime.min.replace(tzinfo=UTC))
    if start > end:
        raise unprocessable("`from` must not be after `to`.", param="from")
    where = StatsFilter(
        start=start,
        end=end,
        model=q.model,
        provider=q.provider,
        key_id=q.key_id,
        user_id=q.user_id,
        org_id=q.org_id,
        org_ids=await _visible_orgs(call, q.org_id),
    )
    rows = await usage_stats(database, where, interval=q.interval, group_by=q.group_by)
    return schemas.UsageStats(
        start=start.replace(minute=0, second=0, microsecond=0),
        end=end,
        interval=q.interval,
        group_by=q.group_by,
        data=[schemas.UsageStatsRow.model_validate(row.as_dict()) for row in rows],
    )


OPERATIONS = [
    Operation(
        "GET",
        "/usage",
        list_usage,
        "List usage records",
        "usage",
        query=schemas.UsageQuery,
        response=schemas.UsageRecordList,
        description="One record per request, without prompt or answer text. Records of the last moments "
        "may not be listed yet: they are written in batches (`usage.flush_seconds`).",
    ),
    Operation(
        "GET",
        "/usage/stats",
        usage_statistics,
        "Usage statistics",
        "usage",
        query=schemas.UsageStatsQuery,
        response=schemas.UsageStats,
        errors=(422,),
        description="Totals per hour or day and per model, provider, key, user or organization, read from "
        "hourly rollups: requests, errors, tokens, cost in USD, requests of unknown price, and latency "
        "(average; p50 and p95 estimated from a histogram).",
    ),
]
