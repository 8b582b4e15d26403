"""The full policy profile of the benchmark: its configuration, its checks and when it is skipped.

The end-to-end test serves the profile's configuration with a real gateway in front of the fake
upstream, on the Redis of ``LOCKGATE_TEST_REDIS_URL`` (skipped when unset; an unreachable server
fails it).
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway_core.config import parse_config
from gateway_core.testing import GatewayServer
from plugins.auth.config_keys import ConfigKeysOptions
from plugins.policies.budgets import BudgetsOptions
from plugins.policies.rate_limits import RateLimitsOptions
from tests.benchmarks import full_policy, run
from tests.benchmarks.fake_upstream import MODEL
from tests.fakes.openai_upstream import CHAT_MODELS, FakeOpenAI

REDIS_ENV = "LOCKGATE_TEST_REDIS_URL"


@pytest.fixture
async def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set")
    problem = await full_policy.redis_unreachable(url)
    assert problem is None, f"{REDIS_ENV} is set but {problem}"
    return url


def profile_config(
    tmp_path: Path, name: str, upstream: FakeOpenAI | None = None, redis_url: str = full_policy.REDIS_URL
) -> dict[str, Any]:
    """The profile's configuration, in front of ``upstream`` when given."""
    core = run.lockgate_config(8080, 9090)
    if upstream is not None:
        deployment = core["models"][MODEL]["deployments"][0]
        deployment.update(base_url=upstream.base_url, api_key=upstream.api_key, model=CHAT_MODELS[0])
    return full_policy.full_policy_config(core, tmp_path / full_policy.DATABASE_FILE, name, redis_url)


def test_the_profile_adds_limits_a_budget_a_price_and_the_usage_log_to_the_core_profile(
    tmp_path: Path,
) -> None:
    config = parse_config(profile_config(tmp_path, "bench-test"), source="<bench>", base=tmp_path)

    key = config.plugin_config("config_keys", ConfigKeysOptions).keys[0]
    assert (key.name, key.rpm, key.tpm) == ("bench-test", full_policy.RATE_LIMIT, full_policy.RATE_LIMIT)
    assert key.key is not None and key.key.get_secret_value() == run.API_KEY
    budget = config.plugin_config("budgets", BudgetsOptions).defaults.key.cost
    assert budget.day == Decimal(full_policy.DAILY_BUDGET_USD)
    assert config.plugin_config("rate_limits", RateLimitsOptions).defaults.empty  # limits are the key's
    price = config.models[MODEL].deployments[0].price
    assert price is not None and (price.input, price.output) == (Decimal("0.15"), Decimal("0.60"))
    assert config.redis is not None and config.redis.url == full_policy.REDIS_URL
    assert config.database_url() == f"sqlite://{(tmp_path / full_policy.DATABASE_FILE).resolve()}"
    assert config.usage.active(has_database=True)
    # The core profile is left as it was.
    core = run.lockgate_config(8080, 9090)
    assert "budgets" not in core["plugins"] and "redis" not in core and "database" not in core


def test_a_request_costs_its_tokens_at_the_profile_price_in_nano_dollars() -> None:
    # 12 x 0.15 + 9 x 0.60 = 7.2 micro-dollars.
    assert full_policy.cost_nano_usd({"prompt_tokens": 12, "completion_tokens": 9}) == 7_200
    assert full_policy.cost_nano_usd({"prompt_tokens": 20, "completion_tokens": 5}) == 6_000


async def test_without_redis_the_profile_is_skipped_with_the_reason(
    tmp_path: Path, refused_port: int
) -> None:
    setup, why = await run.plan_full_policy(tmp_path, f"redis://127.0.0.1:{refused_port}/0")

    assert setup is None
    assert why.startswith(f"Redis at redis://127.0.0.1:{refused_port}/0 is not reachable: nothing accepts")


async def test_the_profile_rate_limits_charges_and_logs_every_request(
    tmp_path: Path, fake: FakeOpenAI, redis_url: str
) -> None:
    name = full_policy.key_name()
    config = profile_config(tmp_path, name, fake, redis_url=redis_url)
    full_policy.migrate(run.lockgate_cli(), run.write_config(tmp_path, 8080, config), run.ROOT)
    body = run.chat_body(stream=False)
    try:
        server = GatewayServer(config, api_key=run.API_KEY, base=tmp_path).start()
        try:
            evidence = await full_policy.verify_enforced(
                server.port, api_key=run.API_KEY, body=body, name=name, redis_url=redis_url
            )
            full_policy.check_readiness(await full_policy.readiness(server.port), evidence)
        finally:
            server.stop()
        full_policy.stored_usage(tmp_path / full_policy.DATABASE_FILE, evidence)
    finally:
        dropped = await full_policy.drop_counters(name, redis_url)

    assert evidence.rate_headers["x-ratelimit-limit-requests"] == str(full_policy.RATE_LIMIT)
    assert evidence.rate_headers["x-ratelimit-remaining-requests"] == str(full_policy.RATE_LIMIT - 1)
    assert evidence.first_cost_nano_usd > 0
    assert evidence.redis_fallbacks == 0
    assert (evidence.records, evidence.priced) == (1, 1)
    assert evidence.cost_usd * 10**9 <= evidence.first_cost_nano_usd < evidence.cost_usd * 10**9 + 1
    assert dropped >= 1  # the budget counter (rate windows expire once drained: at once, at these limits)
    assert await full_policy.budget_charged(name, redis_url) == 0
