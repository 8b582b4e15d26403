"""Quotas and budgets through a real gateway: requests, tokens and cost per period for keys, users and
the organization tree; reservations that concurrent requests cannot overspend; settlements."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway_core.limits import Period, Window
from gateway_core.testing import GatewayServer
from tests.plugins.policies.conftest import settled, used

HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]
#: The mock answers five words (five tokens) at $1000 per million output tokens: $0.005 a call, which
#: is also its worst case with max_tokens=5 (prompt tokens are free).
PRICED = {
    "deployments": [
        {
            "provider": "mock",
            "options": {"reply": "one two three four five"},
            "price": {"input": 0, "output": 1000},
        }
    ]
}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def secret() -> str:
    return f"lg-{uuid.uuid4().hex}"


def config(name: str, key: str, *, redis_url: str | None = None, **plugins: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"graceful_timeout": 2},
        "models": {"mock-echo": {"deployments": [{"provider": "mock"}]}, "priced": PRICED},
        "plugins": {"config_keys": {"keys": [{"name": name, "key": key}]}, **plugins},
    }
    if redis_url is not None:
        data["redis"] = {"url": redis_url}
    return data


def chat(server: GatewayServer, key: str, model: str = "mock-echo", **extra: Any) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=10) as client:
        client.chat.completions.create(model=model, messages=HELLO, **extra)


def refusal(server: GatewayServer, key: str, model: str = "mock-echo", **extra: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        chat(server, key, model, **extra)
    return caught.value


def test_a_daily_request_quota_refuses_until_midnight_utc(serve: Callable[..., GatewayServer]) -> None:
    name, key = unique("daily"), secret()
    server = serve(config(name, key, budgets={"defaults": {"key": {"requests": {"day": 2}}}}))
    chat(server, key)
    chat(server, key)
    error = refusal(server, key)
    assert isinstance(error, openai.RateLimitError)
    body = error.response.json()["error"]
    assert body["type"] == "insufficient_quota" and body["code"] == "quota_exceeded"
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp() + 86400
    assert re.fullmatch(
        rf"Quota exceeded for key '{name}' on requests per day: Limit 2, Used 2, Requested 1\. "
        rf"It resets at {datetime.fromtimestamp(midnight, UTC):%Y-%m-%dT%H:%M:%SZ} \(in [0-9hms ]+\)\.",
        body["message"],
    ), body["message"]
    assert abs(int(error.response.headers["retry-after"]) - (midnight - time.time())) < 5


def test_a_total_token_quota_never_resets_and_gives_no_retry_after(
    serve: Callable[..., GatewayServer],
) -> None:
    name, key = unique("total"), secret()
    # A call reserves its estimated prompt plus max_tokens; the mock then uses 2 + 2 tokens.
    server = serve(config(name, key, budgets={"defaults": {"key": {"tokens": {"total": 200}}}}))
    chat(server, key, max_tokens=100)
    settled(server)
    assert used(server, f"bq:key:config_keys:{name}", Window("tokens:total", 200, Period.TOTAL)) == 4
    error = refusal(server, key, max_tokens=190)
    body = error.response.json()["error"]
    assert body["code"] == "quota_exceeded"
    assert body["message"].startswith(
        f"Quota exceeded for key '{name}' on tokens in total: Limit 200, Used 4,"
    )
    assert body["message"].endswith("This limit does not reset.")
    assert "retry-after" not in error.response.headers


async def test_concurrent_requests_cannot_overspend_a_budget(
    serve: Callable[..., GatewayServer], redis_url: str
) -> None:
    name, key = unique("budget"), secret()
    budgets = {"defaults": {"key": {"cost": {"total": "0.05"}}}}  # ten calls at $0.005
    server = await asyncio.to_thread(serve, config(name, key, redis_url=redis_url, budgets=budgets))
    body = {"model": "priced", "messages": HELLO, "max_tokens": 5}
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {key}"}, timeout=30, limits=limits
    ) as client:
        answers = await asyncio.gather(
            *(client.post(f"{server.base_url}/chat/completions", json=body) for _ in range(100))
        )
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) == 10 and statuses.count(429) == 90
    spent = sum(
        Decimal(5) * 1000 / 1_000_000 for answer in answers if answer.status_code == 200
    )  # what the mock reported, at the deployment's price
    assert spent == Decimal("0.05")
    refused = next(answer.json()["error"] for answer in answers if answer.status_code == 429)
    assert refused["type"] == "insufficient_quota" and refused["code"] == "budget_exceeded"
    assert refused["message"].startswith(
        f"Budget exceeded for key '{name}' on cost in total: Limit $0.05, Used $0.05, "
        "this request may cost up to $0.005."
    )
    await asyncio.to_thread(settled, server)
    window = Window("cost:total", 50_000_000, Period.TOTAL)  # nano-dollars
    assert await asyncio.to_thread(used, server, f"bq:key:config_keys:{name}", window) == 50_000_000


def test_a_request_refused_by_another_policy_gives_its_reservation_back(
    serve: Callable[..., GatewayServer],
) -> None:
    name, key = unique("later"), secret()
    plugins = {
        "budgets": {"defaults": {"key": {"requests": {"total": 5}}}},
        "config_keys": {"keys": [{"name": name, "key": key, "rpm": 1}]},
    }
    server = serve(config(name, key, **plugins))
    chat(server, key)
    for _ in range(2):
        assert refusal(server, key).response.json()["error"]["code"] == "rate_limit_exceeded"
    settled(server)
    assert used(server, f"bq:key:config_keys:{name}", Window("requests:total", 5, Period.TOTAL)) == 1


def test_a_spent_quota_gives_the_rate_limit_back(serve: Callable[..., GatewayServer]) -> None:
    name, key = unique("spent"), secret()
    plugins = {
        "budgets": {"defaults": {"key": {"requests": {"month": 1}}}},
        "config_keys": {"keys": [{"name": name, "key": key, "rpm": 10}]},
    }
    server = serve(config(name, key, **plugins))
    chat(server, key)
    assert refusal(server, key).response.json()["error"]["code"] == "quota_exceeded"
    settled(server)
    assert used(server, f"rl:key:config_keys:{name}", Window("requests", 10, 60)) == 1


def test_a_model_without_a_price_is_served_and_flagged(
    serve: Callable[..., GatewayServer], tmp_path: Path
) -> None:
    name, key = unique("unpriced"), secret()
    table = tmp_path / "prices.yaml"
    table.write_text("models:\n  some-other-model: {input: 1, output: 2}\n")
    data = config(name, key, budgets={"defaults": {"key": {"cost": {"day": 1}}}})
    data["pricing"] = {"table": str(table)}
    server = serve(data)
    chat(server, key)
    chat(server, key)
    assert server.gateway.plugin_state["budgets"].unpriced == 2
    settled(server)
    assert used(server, f"bq:key:config_keys:{name}", Window("cost:day", 10**9, Period.DAY)) == 0


# --- the organization tree, from the database ----------------------------------------------------------------


def test_budgets_and_quotas_roll_up_the_organization_tree(
    serve: Callable[..., GatewayServer], store: Callable[..., Any], database_url: str
) -> None:
    from gateway_core.store import keys, users
    from gateway_core.store.models import Organization

    async def tree() -> tuple[str, str]:
        root = await Organization.create(
            name="holding", budget_limit=Decimal("0.015"), budget_period="total", metadata={}
        )
        acme = await Organization.create(name="acme", parent=root)
        user = await users.create_user("dev@acme.example", org=acme)
        _, first = await keys.create_key("first", user=user)
        _, second = await keys.create_key("second", org=acme)
        return first, second

    first, second = store(tree)
    data = {
        "server": {"graceful_timeout": 2},
        "database": {"url": database_url},
        "models": {"priced": PRICED},
    }
    server = serve(data)
    chat(server, first, "priced", max_tokens=5)
    chat(server, second, "priced", max_tokens=5)  # another key of the organization: the same budget
    chat(server, first, "priced", max_tokens=5)
    error = refusal(server, second, "priced", max_tokens=5)
    message = error.response.json()["error"]["message"]
    assert message.startswith(
        "Budget exceeded for organization 'holding' on cost in total: Limit $0.015, Used $0.015,"
    )


def test_organization_limits_and_quotas_come_from_its_metadata(
    serve: Callable[..., GatewayServer], store: Callable[..., Any], database_url: str
) -> None:
    from gateway_core.store import keys
    from gateway_core.store.models import Organization

    async def org_keys() -> tuple[str, str]:
        root = await Organization.create(name="root", metadata={"quotas": {"requests": {"day": 2}}})
        team = await Organization.create(name="team", parent=root, metadata={"limits": {"rpm": 5}})
        _, one = await keys.create_key("one", org=team)
        _, two = await keys.create_key("two", org=team)
        return one, two

    one, two = store(org_keys)
    models = {"mock-echo": {"deployments": [{"provider": "mock"}]}}
    server = serve({"database": {"url": database_url}, "models": models})
    with openai.OpenAI(base_url=server.base_url, api_key=one, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model="mock-echo", messages=HELLO)
    assert raw.headers["x-ratelimit-limit-requests"] == "5"  # the team's limit, from its metadata
    assert raw.headers["x-ratelimit-remaining-requests"] == "4"
    chat(server, two)
    quota = refusal(server, one)
    assert quota.response.json()["error"]["message"].startswith(
        "Quota exceeded for organization 'root' on requests per day: Limit 2, Used 2, Requested 1."
    )
