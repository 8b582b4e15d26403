"""The "full policy" Lockgate profile: auth, Redis rate limits, a budget and the usage log, all on.

It is the core profile's gateway and deployment plus a SQLite database (migrated with ``lockgate db
upgrade``) for the usage log, the shared Redis for the counters, a price on the deployment so every
answer has a cost, and limits on the bench key that every request is checked and charged against
but none ever reaches: an RPM and a TPM limit (a Lua script in Redis per check and per settlement)
and a budget in USD per day (reserved before the call, settled after it).

Before it is measured, :func:`verify_enforced` reads the rate-limit headers of one answer and checks
that the budget counter in Redis was settled to its real cost; after the run, :func:`check_readiness`
confirms that the counters stayed in Redis, and :func:`stored_usage` counts the usage records the
database holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import secrets
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from gateway_core.limits.redis import hash_tag

REDIS_URL = "redis://127.0.0.1:6379/0"
#: Requests and tokens per minute of the bench key: checked on every request, never reached.
RATE_LIMIT = 10_000_000
#: The bench key's budget in USD per UTC day: reserved and settled on every request, never reached.
DAILY_BUDGET_USD = 1_000_000
#: The deployment's price in USD per million tokens, so every answer has a cost.
PRICE = {"input": "0.15", "output": "0.60"}
DATABASE_FILE = "usage.sqlite3"
#: Where the gateway keeps its counters in Redis (``gateway_core.limits``).
COUNTERS_PREFIX = "lockgate:limits"
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens")


def key_name() -> str:
    """A bench key name of its own per run, so its counters in Redis start at zero."""
    return f"bench-{secrets.token_hex(4)}"


def key_id(name: str) -> str:
    """The key id the ``config_keys`` plugin gives a key entry (it names the policies' scopes)."""
    return f"config_keys:{name}"


def full_policy_config(
    core: dict[str, Any], database: Path, name: str, redis_url: str = REDIS_URL
) -> dict[str, Any]:
    """The core profile's configuration with the policies and the usage log on."""
    config = copy.deepcopy(core)
    for group in config["models"].values():
        for deployment in group["deployments"]:
            deployment["price"] = dict(PRICE)
    key = config["plugins"]["config_keys"]["keys"][0]
    key.update(name=name, rpm=RATE_LIMIT, tpm=RATE_LIMIT)
    config["plugins"]["budgets"] = {"defaults": {"key": {"cost": {"day": DAILY_BUDGET_USD}}}}
    config["database"] = {"url": f"sqlite://{database.resolve()}"}
    config["redis"] = {"url": redis_url}
    config["usage"] = {"enabled": True}
    return config


def migrate(command: list[str], config_path: Path, cwd: Path) -> None:
    """Create the profile's database with ``lockgate db upgrade`` (``command`` runs ``lockgate``)."""
    done = subprocess.run(
        [*command, "db", "upgrade", "--config", str(config_path)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"lockgate db upgrade failed ({done.returncode}):\n{done.stderr[-2000:]}")


# --- Redis -----------------------------------------------------------------------------------------


async def redis_unreachable(url: str = REDIS_URL, timeout: float = 2.0) -> str | None:
    """Why Redis at ``url`` cannot serve the profile, or None when it answers ``PING``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return f"nothing accepts connections on {host}:{port} ({exc or type(exc).__name__})"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    try:
        async with asyncio.timeout(timeout), redis_client(url) as client:
            await client.ping()
    except Exception as exc:  # the client wraps its errors in exception groups
        return f"{host}:{port} does not answer PING ({exc})"
    return None


@contextlib.asynccontextmanager
async def redis_client(url: str = REDIS_URL) -> AsyncIterator[Any]:
    import coredis

    client = coredis.Redis.from_url(url, connect_timeout=2, stream_timeout=2)
    async with client:
        yield client


async def redis_cpu_seconds(url: str = REDIS_URL) -> float:
    """User plus system CPU time the Redis server has used so far (``INFO cpu``)."""
    cpu, _ = await redis_usage(url)
    return cpu


async def redis_usage(url: str = REDIS_URL) -> tuple[float, int]:
    """CPU seconds the Redis server has used so far and the scripts it has run (``EVALSHA`` and
    ``EVAL`` calls: one per round trip of the counters)."""
    async with redis_client(url) as client:
        cpu = await client.info("cpu")
        stats = await client.info("commandstats")
    scripts = sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), scripts


def _scope_pattern(name: str) -> str:
    """Every counter of the key's scopes (rate limits and budget), as a ``SCAN`` pattern."""
    return f"{COUNTERS_PREFIX}:{{*:{key_id(name)}}}:*"


async def budget_charged(name: str, url: str = REDIS_URL) -> int:
    """Micro-dollars the key's daily budget counter holds in Redis (0 when it has none)."""
    pattern = f"{COUNTERS_PREFIX}:{hash_tag('bq:key:' + key_id(name))}:cost:day:*"
    total = 0
    async with redis_client(url) as client:
        async for key in client.scan_iter(match=pattern, count=1000):
            if (key.decode() if isinstance(key, bytes) else str(key)).endswith(":since"):
                continue  # the counter's marker (since when it counted everything), not a count
            value = await client.get(key)
            total += int(value or 0)
    return total


async def drop_counters(name: str, url: str = REDIS_URL) -> int:
    """Delete the key's counters from Redis (they would expire by themselves); returns how many."""
    async with redis_client(url) as client:
        keys = [key async for key in client.scan_iter(match=_scope_pattern(name), count=1000)]
        if keys:
            await client.delete(keys)
    return len(keys)


# --- checks ----------------------------------------------------------------------------------------


@dataclass
class Evidence:
    """What showed, in one run, that the policies and the usage log ran on every request."""

    #: The ``x-ratelimit-*`` headers of the first answer.
    rate_headers: dict[str, str] = field(default_factory=dict)
    #: The first request's real cost in nano-dollars, which its budget reservation was settled to.
    first_cost_nano_usd: int = 0
    #: Answers the gateway gave (every status), counted by the load generator.
    answered: int = 0
    #: Nano-dollars the key's daily budget counter held after the run.
    budget_nano_usd: int = 0
    #: Usage records in the database after the gateway stopped, those with a cost, and their cost.
    records: int = 0
    priced: int = 0
    cost_usd: Decimal = Decimal(0)
    #: Counter operations served from memory because Redis was out of reach (0 when all went well).
    redis_fallbacks: int = 0

    def lines(self) -> list[str]:
        """The evidence as sentences for the report."""
        headers = self.rate_headers
        share = self.records / self.answered if self.answered else 0.0
        return [
            "Rate limits: the first answer carried "
            + ", ".join(
                f"`{name}: {headers.get(name, '-')}`"
                for name in (
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-limit-tokens",
                    "x-ratelimit-remaining-tokens",
                )
            )
            + f"; the counters stayed in Redis ({self.redis_fallbacks} fall-backs to memory).",
            "Budget: the first request's reservation was settled to its real cost, "
            f"${self.first_cost_nano_usd / 1e9:.9f}; after the run the key's daily budget in Redis held "
            f"${self.budget_nano_usd / 1e9:.9f} for ${self.cost_usd:.9f} of cost in the usage records.",
            f"Usage log: {self.records:,} records in the database for {self.answered:,} answers "
            f"({share:.1%}), {self.priced:,} of them with a cost.",
        ]


def cost_nano_usd(usage: dict[str, Any]) -> int:
    """What an answer's usage costs at :data:`PRICE`, in whole nano-dollars rounded up (as budgets
    charge it; the fake upstream reports no cached tokens)."""
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    micro = prompt * Decimal(PRICE["input"]) + completion * Decimal(PRICE["output"])  # USD per million
    return int((micro * 1000).to_integral_value(rounding=ROUND_CEILING))


async def settled_budget(name: str, redis_url: str = REDIS_URL, seconds: float = 5.0) -> int:
    """The key's budget counter once the settlements of earlier requests landed (they may wait a
    few milliseconds to share a round trip): two readings 0.1 s apart agree."""
    deadline = time.monotonic() + seconds
    last = await budget_charged(name, redis_url)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = await budget_charged(name, redis_url)
        if now == last:
            return now
        last = now
    return last


async def verify_enforced(
    port: int, *, api_key: str, body: bytes, name: str, host: str = "127.0.0.1", redis_url: str = REDIS_URL
) -> Evidence:
    """Send one request; check that the rate limits counted it and that its budget reservation was
    settled to its real cost."""
    url = f"http://{host}:{port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    before = await settled_budget(name, redis_url)
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        answer = await response.read()
        found = {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("x-ratelimit-")}
    if response.status != 200:
        raise RuntimeError(f"full policy: answered {response.status}: {answer[:300]!r}")
    for header in RATE_HEADERS:
        if found.get(header) != str(RATE_LIMIT):
            raise RuntimeError(f"full policy: no rate limit in the answer ({header}: {found.get(header)!r})")
    remaining = found.get("x-ratelimit-remaining-requests", "")
    if not remaining.isdigit() or int(remaining) >= RATE_LIMIT:
        raise RuntimeError(f"full policy: the request was not counted (remaining requests {remaining!r})")
    cost = cost_nano_usd(orjson.loads(answer)["usage"])
    # The budget is settled after the answer is sent: wait for the counter to grow by the real cost.
    deadline = time.monotonic() + 5.0
    while (charged := await budget_charged(name, redis_url) - before) != cost:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"full policy: the request charged the key's budget {charged} nUSD, not its cost of "
                f"{cost} nUSD"
            )
        await asyncio.sleep(0.05)
    return Evidence(rate_headers=found, first_cost_nano_usd=cost)


async def readiness(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """The gateway's ``GET /ready`` body."""
    async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}/ready") as response:
        body: dict[str, Any] = orjson.loads(await response.read())
    return body


def check_readiness(body: dict[str, Any], evidence: Evidence) -> None:
    """Record Redis fall-backs; fail when the counters were not in Redis or usage records were lost."""
    limits = body.get("limits") or {}
    usage = body.get("usage") or {}
    if limits.get("backend") != "redis":
        raise RuntimeError(f"full policy: the counters are not in Redis: {limits}")
    evidence.redis_fallbacks = int(limits.get("fallbacks", 0))
    if usage.get("dropped"):
        raise RuntimeError(f"full policy: the usage log dropped records: {usage}")


def stored_usage(database: Path, evidence: Evidence) -> None:
    """Count the usage records (all, and those with a cost) the database holds."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        (records,) = connection.execute("SELECT COUNT(*) FROM usage_records").fetchone()
        costs = [
            Decimal(str(cost))
            for (cost,) in connection.execute("SELECT cost FROM usage_records WHERE cost IS NOT NULL")
        ]
    evidence.records, evidence.priced, evidence.cost_usd = int(records), len(costs), sum(costs, Decimal(0))
