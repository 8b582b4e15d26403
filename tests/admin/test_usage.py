"""``/admin/api/usage``: records and statistics of the usage log, for every role, within organizations."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from tortoise.context import TortoiseContext
from tortoise.transactions import in_transaction

from gateway_core.store.database import connection_name, dialect_of, tortoise_config
from gateway_core.testing import DEFAULT_TEST_KEY
from gateway_core.usage.records import UsageEntry, dlp_findings_json
from gateway_core.usage.storage import write_batch
from tests.admin.conftest import Admin
from tests.gateway_core.usage.factories import usage_entry

DAY = datetime(2026, 1, 10, tzinfo=UTC)


async def _store(url: str, entries: list[UsageEntry]) -> None:
    dialect = dialect_of(url)
    async with TortoiseContext() as context:
        await context.init(config=tortoise_config(url, pool_min=1, pool_max=1))
        async with in_transaction(connection_name(dialect)) as connection:
            await write_batch(connection, dialect, entries)


@pytest.fixture(scope="module")
def seeded(admin: Admin) -> dict[str, Any]:
    """Usage of the organization ``acme`` (3 requests), its child (2), another organization (4) and of
    a key without organization (1), on 2026-01-10 between 10:00 and 12:00 UTC."""
    acme, child, other = admin.org["id"], admin.child_org["id"], str(uuid.uuid4())
    plan = [
        (acme, "gpt-4o-mini", "key-acme", 10, 200),
        (acme, "gpt-4o-mini", "key-acme", 11, 200),
        (acme, "claude-haiku", "key-acme", 11, 502),
        (child, "gpt-4o-mini", "key-child", 10, 200),
        (child, "gpt-4o-mini", "key-child", 11, 429),
        (other, "gpt-4o-mini", "key-other", 10, 200),
        (other, "gpt-4o-mini", "key-other", 10, 200),
        (other, "claude-haiku", "key-other", 11, 200),
        (other, "claude-haiku", "key-other", 11, 200),
        (None, "mock", "key-loose", 10, 200),
    ]
    entries = [
        usage_entry(
            DAY.replace(hour=hour, minute=index),
            model=model,
            key_id=key,
            org_id=org,
            status=status,
            cost=Decimal("0.01000000"),
            request_id=f"seed-{index}",
        )
        for index, (org, model, key, hour, status) in enumerate(plan)
    ]
    asyncio.run(_store(admin.backend.url, entries))
    return {"acme": acme, "child": child, "other": other}


RANGE = {"from": "2026-01-10T00:00:00Z", "to": "2026-01-11T00:00:00Z"}


def request_ids(response: Any) -> set[str]:
    assert response.status_code == 200, response.text
    return {record["request_id"] for record in response.json()["data"]}


def test_every_role_reads_all_usage_and_filters_narrow_it(admin: Admin, seeded: dict[str, Any]) -> None:
    for who in ("root", "admin", "write", "read"):
        listed = admin.get("/usage", who, params={**RANGE, "limit": 200})
        assert request_ids(listed) == {f"seed-{i}" for i in range(10)}, who
    assert request_ids(admin.get("/usage", params={**RANGE, "model": "claude-haiku"})) == {
        "seed-2",
        "seed-7",
        "seed-8",
    }
    assert request_ids(admin.get("/usage", params={**RANGE, "status": 502})) == {"seed-2"}
    assert request_ids(admin.get("/usage", params={**RANGE, "key_id": "key-child"})) == {"seed-3", "seed-4"}
    assert request_ids(admin.get("/usage", params={**RANGE, "org_id": seeded["other"]})) == {
        "seed-5",
        "seed-6",
        "seed-7",
        "seed-8",
    }
    late = {"from": "2026-01-10T11:00:00+00:00", "to": "2026-01-10T11:03:00+00:00"}
    assert request_ids(admin.get("/usage", params=late)) == {"seed-1", "seed-2"}


def test_records_are_paged_oldest_or_newest_first(admin: Admin, seeded: dict[str, Any]) -> None:
    page = admin.get("/usage", params={**RANGE, "limit": 3, "order": "desc"}).json()
    assert (page["total"], page["has_more"], len(page["data"])) == (10, True, 3)
    assert [r["request_id"] for r in page["data"]] == ["seed-8", "seed-7", "seed-4"]
    record = admin.get("/usage", params={**RANGE, "limit": 1}).json()["data"][0]
    assert record["request_id"] == "seed-0"
    assert record["cost"] == "0.01000000"
    assert record["created_at"].startswith("2026-01-10T10:00:00")
    assert {"prompt_tokens", "latency_ms", "price_known", "deployment_id"} <= set(record)


def test_organization_bound_users_read_only_their_tree(admin: Admin, seeded: dict[str, Any]) -> None:
    for who in ("org-read", "org-admin"):
        listed = admin.get("/usage", who, params={**RANGE, "limit": 200})
        assert request_ids(listed) == {"seed-0", "seed-1", "seed-2", "seed-3", "seed-4"}
    assert request_ids(admin.get("/usage", "org-read", params={**RANGE, "org_id": seeded["child"]})) == {
        "seed-3",
        "seed-4",
    }
    outside = admin.get("/usage", "org-read", params={**RANGE, "org_id": seeded["other"]})
    assert outside.status_code == 403
    assert outside.json()["error"]["param"] == "org_id"
    stats = admin.get("/usage/stats", "org-read", params={**RANGE, "group_by": "org"}).json()
    assert {row["group"]: row["requests"] for row in stats["data"]} == {seeded["acme"]: 3, seeded["child"]: 2}
    assert (
        admin.get("/usage/stats", "org-read", params={**RANGE, "org_id": seeded["other"]}).status_code == 403
    )


def test_stats_total_per_group_and_period(admin: Admin, seeded: dict[str, Any]) -> None:
    stats = admin.get("/usage/stats", params={**RANGE, "group_by": "model"}).json()
    assert (stats["object"], stats["interval"], stats["group_by"]) == ("usage.stats", "none", "model")
    assert stats["start"].startswith("2026-01-10T00:00:00")
    by_model = {row["group"]: row for row in stats["data"]}
    assert {name: row["requests"] for name, row in by_model.items()} == {
        "gpt-4o-mini": 6,
        "claude-haiku": 3,
        "mock": 1,
    }
    assert by_model["gpt-4o-mini"]["errors"] == 1 and by_model["claude-haiku"]["errors"] == 1
    assert Decimal(by_model["gpt-4o-mini"]["cost"]) == Decimal("0.06")
    assert by_model["mock"]["latency_p50_ms"] is not None
    hourly = admin.get("/usage/stats", params={**RANGE, "interval": "hour"}).json()["data"]
    assert [(row["period"][:13], row["requests"]) for row in hourly] == [
        ("2026-01-10T10", 5),
        ("2026-01-10T11", 5),
    ]
    daily = admin.get("/usage/stats", params={**RANGE, "interval": "day", "group_by": "key"}).json()["data"]
    assert {row["group"]: row["requests"] for row in daily} == {
        "key-acme": 3,
        "key-child": 2,
        "key-other": 4,
        "key-loose": 1,
    }
    empty = admin.get("/usage/stats", params={"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"})
    assert empty.json()["data"] == []


def test_records_show_their_dlp_findings_and_filter_on_them(admin: Admin) -> None:
    day = datetime(2026, 1, 12, 10, tzinfo=UTC)
    found = dlp_findings_json({("EMAIL_ADDRESS", "request", "redact"): 2, ("US_SSN", "response", "block"): 1})
    plan = [("dlp-found", found), ("dlp-clean", dlp_findings_json({})), ("dlp-unfiltered", None)]
    entries = [
        usage_entry(day.replace(minute=index), request_id=request_id, dlp_findings=findings)
        for index, (request_id, findings) in enumerate(plan)
    ]
    asyncio.run(_store(admin.backend.url, entries))
    that_day = {"from": "2026-01-12T00:00:00Z", "to": "2026-01-13T00:00:00Z"}

    records = {
        r["request_id"]: r["dlp_findings"] for r in admin.get("/usage", params=that_day).json()["data"]
    }
    assert records == {
        "dlp-found": [
            {"type": "EMAIL_ADDRESS", "direction": "request", "action": "redact", "count": 2},
            {"type": "US_SSN", "direction": "response", "action": "block", "count": 1},
        ],
        "dlp-clean": [],
        "dlp-unfiltered": None,
    }
    assert request_ids(admin.get("/usage", params={**that_day, "dlp": "true"})) == {"dlp-found"}
    assert request_ids(admin.get("/usage", params={**that_day, "dlp": "false"})) == {
        "dlp-clean",
        "dlp-unfiltered",
    }
    refused = admin.get("/usage", params={**that_day, "dlp": "maybe"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "dlp"


@pytest.mark.parametrize(
    ("params", "param", "status"),
    [
        ({"interval": "week"}, "interval", 400),
        ({"group_by": "team"}, "group_by", 400),
        ({"from": "yesterday"}, "from", 400),
        ({"from": "1700000000"}, "from", 400),
        ({"to": "0.5"}, "to", 400),
        ({"groupby": "model"}, "groupby", 400),
        ({"from": "2026-01-11T00:00:00Z", "to": "2026-01-10T00:00:00Z"}, "from", 422),
    ],
)
def test_stats_refuse_bad_parameters(admin: Admin, params: dict[str, str], param: str, status: int) -> None:
    response = admin.get("/usage/stats", params=params)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_usage_needs_a_token(admin: Admin) -> None:
    for path in ("/usage", "/usage/stats"):
        assert admin.get(path, None).status_code == 401


def test_a_request_through_the_gateway_shows_up_in_the_usage(admin: Admin) -> None:
    marker = f"req-usage-{uuid.uuid4().hex[:8]}"
    answer = admin.client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {DEFAULT_TEST_KEY}", "x-request-id": marker},
        json={"model": "mock-other", "messages": [{"role": "user", "content": "a secret prompt"}]},
    )
    assert answer.status_code == 200, answer.text
    records: list[dict[str, Any]] = []
    for _ in range(100):  # written within usage.flush_seconds; 10 s at most
        records = admin.get("/usage", params={"model": "mock-other"}).json()["data"]
        if records:
            break
        time.sleep(0.1)
    [record] = records
    assert (record["request_id"], record["status"], record["provider"]) == (marker, 200, "mock")
    assert record["key_id"] == "config_keys:test"
    assert record["prompt_tokens"] > 0 and record["total_tokens"] >= record["prompt_tokens"]
    assert "a secret prompt" not in str(record)
    assert datetime.fromisoformat(record["created_at"]) > datetime.now(UTC) - timedelta(minutes=5)
