"""Prepaid billing through a real gateway: charges, refusals, top-ups, concurrency and outages.

Every test runs on SQLite and on PostgreSQL (the admin tests' databases); most run with balances in
the gateway's memory and in Redis. Callers are API keys made through the admin API for users and
organizations of the database, and requests go through the ``openai`` SDK.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai
import pytest

from gateway_core.pricing import estimate_prompt_tokens
from gateway_core.testing import GatewayServer
from tests.admin.conftest import ROOT_EMAIL, ROOT_PASSWORD, Backend, admin_config, backend
from tests.admin.test_replicas import _redis_url

__all__ = ["backend"]  # the module-scoped database fixture, on SQLite and on PostgreSQL

#: USD per million tokens: 0.001 USD per prompt token, 0.002 USD per completion token.
PRICE = {"input": 1000, "output": 2000}
PROMPT = "one two three four"
MAX_TOKENS = 4
#: The mock provider counts words: 4 prompt and 4 completion tokens (it echoes the prompt).
COST = Decimal("0.012")
MODELS = {
    "priced": {"deployments": [{"provider": "mock", "price": PRICE}]},
    "slow": {"deployments": [{"provider": "mock", "price": PRICE, "options": {"latency_ms": 400}}]},
    "unpriced": {"deployments": [{"provider": "mock", "model": "a-model-no-table-knows"}]},
}


def worst_case(prompt: str = PROMPT, max_tokens: int = MAX_TOKENS) -> Decimal:
    """What the gateway reserves for one request: the estimated prompt and max_tokens at PRICE."""
    prompt_tokens = estimate_prompt_tokens({"messages": [{"role": "user", "content": prompt}]})
    return Decimal(prompt_tokens * PRICE["input"] + max_tokens * PRICE["output"]) / 1_000_000


class Api:
    """The admin API of a gateway, logged in as the seeded root admin."""

    def __init__(self, server: GatewayServer, token: str) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url + "/admin/api", timeout=30)
        self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def org(self) -> str:
        return str(
            self.call("POST", "/organizations", 201, json={"name": f"org-{uuid.uuid4().hex[:8]}"})["id"]
        )

    def user(self, org_id: str | None = None) -> str:
        body = {"email": f"u-{uuid.uuid4().hex[:8]}@example.com", "org_id": org_id}
        return str(self.call("POST", "/users", 201, json=body)["id"])

    def key(self, user_id: str | None = None, org_id: str | None = None) -> str:
        body = {"name": "billing", "user_id": user_id, "org_id": org_id}
        return str(self.call("POST", "/keys", 201, json=body)["secret"])

    def top_up(self, owner_type: str, owner_id: str, amount: str, note: str = "") -> dict[str, Any]:
        path = f"/balances/{owner_type}/{owner_id}/topups"
        result: dict[str, Any] = self.call("POST", path, 201, json={"amount": amount, "note": note})
        return result

    def balance(self, owner_type: str, owner_id: str) -> Decimal:
        return Decimal(self.call("GET", f"/balances/{owner_type}/{owner_id}", 200)["amount"])

    def charges(self, owner_type: str, owner_id: str) -> list[dict[str, Any]]:
        params = {"owner_type": owner_type, "owner_id": owner_id, "kind": "charge", "limit": 200}
        data: list[dict[str, Any]] = self.call("GET", "/billing-records", 200, params=params)["data"]
        return data

    def wait_for_charges(self, owner_type: str, owner_id: str, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 10
        while True:
            charges = self.charges(owner_type, owner_id)
            if len(charges) >= count or time.monotonic() > deadline:
                assert len(charges) == count, charges
                return charges
            time.sleep(0.05)

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def root_token(backend: Backend) -> str:
    """An access token of the root admin (valid on every gateway of the database)."""
    with GatewayServer(admin_config(backend.url)) as server:
        response = httpx.post(
            server.url + "/admin/api/auth/login",
            json={"email": ROOT_EMAIL, "password": ROOT_PASSWORD},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])


Start = Callable[..., tuple[GatewayServer, Api]]


@pytest.fixture
def start(backend: Backend, root_token: str) -> Iterator[Start]:
    """``start(redis=False, **billing_options)``: a gateway with billing on the test database."""
    running: list[tuple[GatewayServer, Api]] = []

    def run(
        *,
        redis: bool | str = False,
        on_outage: str = "open",
        pricing: dict[str, Any] | None = None,
        **options: Any,
    ) -> tuple[GatewayServer, Api]:
        extra: dict[str, Any] = {
            "models": MODELS,
            "plugins": {"billing": {"flush_seconds": 0.05, **options}},
            "pricing": pricing or {},
        }
        if redis:
            url = redis if isinstance(redis, str) else _redis_url()
            extra["redis"] = {"url": url, "on_outage": on_outage, "timeout": 0.3}
        config = admin_config(backend.url, **extra)
        server = GatewayServer(config).start()
        api = Api(server, root_token)
        running.append((server, api))
        return server, api

    yield run
    for server, api in running:
        api.close()
        server.stop()


def sdk(server: GatewayServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30)


def chat(server: GatewayServer, key: str, model: str = "priced", **extra: Any) -> Any:
    with sdk(server, key) as client:
        return client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=MAX_TOKENS,
            **extra,
        )


def refusal(server: GatewayServer, key: str, model: str = "priced") -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        chat(server, key, model)
    return info.value


STORES = pytest.mark.parametrize("store", ["memory", "redis"])


@STORES
def test_a_request_is_charged_its_price_times_its_usage(start: Start, store: str) -> None:
    server, api = start(redis=store == "redis")
    user = api.user()
    key = api.key(user_id=user)
    api.top_up("user", user, "1")

    raw = chat(server, key)
    completion = raw.parse()
    assert completion.usage.prompt_tokens == 4 and completion.usage.completion_tokens == 4

    [charge] = api.wait_for_charges("user", user, 1)
    assert Decimal(charge["amount"]) == -COST
    assert Decimal(charge["balance_after"]) == 1 - COST
    assert charge["request_id"] == raw.headers["x-request-id"]
    assert charge["actor"] is None
    assert "4 prompt + 4 completion tokens" in charge["note"]
    assert api.balance("user", user) == 1 - COST
    # A streamed answer is charged the same.
    with sdk(server, key) as client:
        stream = client.chat.completions.create(
            model="priced",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == PROMPT
    api.wait_for_charges("user", user, 2)
    assert api.balance("user", user) == 1 - 2 * COST


@STORES
def test_a_short_balance_is_refused_with_402_until_a_top_up(start: Start, store: str) -> None:
    server, api = start(redis=store == "redis", allow_negative=False)
    user = api.user()
    key = api.key(user_id=user)
    api.top_up("user", user, "0.001")

    error = refusal(server, key)
    assert error.status_code == 402
    assert error.body == {
        "message": error.body["message"],
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_balance",
    }
    message = error.body["message"]
    assert f"user {user} is 0.001 USD" in message
    assert f"may cost up to {worst_case().normalize():f}" in message
    assert api.balance("user", user) == Decimal("0.001")  # a refusal costs nothing

    api.top_up("user", user, "0.05", note="unblock")
    assert chat(server, key).http_response.status_code == 200
    api.wait_for_charges("user", user, 1)
    assert api.balance("user", user) == Decimal("0.051") - COST


@STORES
def test_negative_balances_when_allowed_then_refused_at_zero(start: Start, store: str) -> None:
    server, api = start(redis=store == "redis", allow_negative=True)
    user = api.user()
    key = api.key(user_id=user)
    api.top_up("user", user, "0.005")  # less than the request costs

    assert chat(server, key).http_response.status_code == 200
    api.wait_for_charges("user", user, 1)
    assert api.balance("user", user) == Decimal("0.005") - COST < 0

    error = refusal(server, key)
    assert error.status_code == 402
    assert f"user {user} is -0.007 USD" in error.body["message"]
    api.top_up("user", user, "1")
    assert chat(server, key).http_response.status_code == 200


def test_callers_without_a_balance_are_refused_or_free(start: Start) -> None:
    strict, api = start(require_balance=True)
    user = api.user()
    key = api.key(user_id=user)
    error = refusal(strict, key)
    assert error.status_code == 402
    assert "no prepaid balance" in error.body["message"]
    # A key of no user and no organization has nobody to pay.
    assert refusal(strict, api.key()).status_code == 402

    free, free_api = start(require_balance=False)
    assert chat(free, key).http_response.status_code == 200
    time.sleep(0.3)  # settled and flushed by now: nothing to record
    assert free_api.charges("user", user) == []
    assert free_api.call("GET", f"/balances/user/{user}", 404)


@STORES
def test_concurrent_requests_never_take_the_balance_below_zero(start: Start, store: str) -> None:
    server, api = start(redis=store == "redis", allow_negative=False)
    user = api.user()
    key = api.key(user_id=user)
    initial = worst_case() * 5
    api.top_up("user", user, str(initial))

    async def burst() -> list[int]:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=key, max_retries=0, timeout=30
        ) as client:

            async def one() -> int:
                try:
                    await client.chat.completions.create(
                        model="slow", messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS
                    )
                except openai.APIStatusError as exc:
                    return exc.status_code
                return 200

            return await asyncio.gather(*(one() for _ in range(50)))

    statuses = asyncio.run(burst())
    served = statuses.count(200)
    assert set(statuses) <= {200, 402}
    assert 5 <= served < 50  # the slow calls overlap: five reservations fit, the rest are refused
    charges = api.wait_for_charges("user", user, served)
    assert all(Decimal(charge["amount"]) == -COST for charge in charges)
    final = api.balance("user", user)
    assert final == initial - served * COST
    assert final >= 0


def test_an_unknown_price_is_charged_nothing_and_recorded(start: Start, tmp_path: Path) -> None:
    table = tmp_path / "prices.yaml"  # a price table that does not price the mock provider
    table.write_text("source: tests\ndate: '2026-01-01'\nmodels:\n  gpt-4o: {input: 2.5, output: 10}\n")
    server, api = start(pricing={"table": str(table)})
    user = api.user()
    key = api.key(user_id=user)
    api.top_up("user", user, "0.01")
    assert chat(server, key, "unpriced").http_response.status_code == 200
    [charge] = api.wait_for_charges("user", user, 1)
    assert Decimal(charge["amount"]) == 0
    assert charge["note"].startswith("price unknown")
    assert api.balance("user", user) == Decimal("0.01")


@STORES
def test_the_organization_pays_first_then_the_user(start: Start, store: str) -> None:
    server, api = start(redis=store == "redis", charge="both")
    org = api.org()
    user = api.user(org_id=org)
    key = api.key(user_id=user)  # the key's organization is its user's
    enough_for_one = worst_case() + COST / 2
    api.top_up("org", org, str(enough_for_one))
    api.top_up("user", user, "1")

    assert chat(server, key).http_response.status_code == 200
    api.wait_for_charges("org", org, 1)
    assert api.balance("org", org) == enough_for_one - COST
    assert api.charges("user", user) == []
    # The organization cannot cover the next one: the user pays.
    assert chat(server, key).http_response.status_code == 200
    api.wait_for_charges("user", user, 1)
    assert api.balance("user", user) == 1 - COST
    assert api.balance("org", org) == enough_for_one - COST


def test_charge_user_or_org_only(start: Start) -> None:
    by_user, user_api = start(charge="user")
    org = user_api.org()
    user = user_api.user(org_id=org)
    key = user_api.key(user_id=user)
    user_api.top_up("org", org, "1")
    assert refusal(by_user, key).status_code == 402  # the user has no balance; the org is not asked
    by_org, org_api = start(charge="org")
    assert chat(by_org, key).http_response.status_code == 200
    org_api.wait_for_charges("org", org, 1)


def test_charges_are_written_at_shutdown(backend: Backend, root_token: str) -> None:
    config = admin_config(backend.url, models=MODELS, plugins={"billing": {"flush_seconds": 3600}})
    with GatewayServer(config) as server:
        api = Api(server, root_token)
        user = api.user()
        key = api.key(user_id=user)
        api.top_up("user", user, "1")
        for _ in range(3):
            assert chat(server, key).http_response.status_code == 200
        time.sleep(0.2)
        assert api.charges("user", user) == []  # waiting for the next write, an hour away
        api.close()
    with GatewayServer(admin_config(backend.url)) as server:
        api = Api(server, root_token)
        assert len(api.charges("user", user)) == 3
        assert Decimal(api.call("GET", f"/balances/user/{user}", 200)["stored_amount"]) == 1 - 3 * COST
        api.close()


@pytest.mark.parametrize("on_outage", ["open", "closed"])
def test_a_redis_outage_follows_on_outage(start: Start, on_outage: str) -> None:
    from tests.plugins.policies.redis_server import RedisServer

    with RedisServer() as redis:
        server, api = start(redis=redis.url, on_outage=on_outage)
        user = api.user()
        key = api.key(user_id=user)
        api.top_up("user", user, "1")
        assert chat(server, key).http_response.status_code == 200
        api.wait_for_charges("user", user, 1)
        redis.kill()
        if on_outage == "closed":
            error = refusal(server, key)
            assert error.status_code == 503
            assert error.body["code"] == "billing_unavailable"
            return
        # Served from the worker's memory (loaded from the database) and still charged.
        for _ in range(2):
            assert chat(server, key).http_response.status_code == 200
        api.wait_for_charges("user", user, 3)
        # Redis comes back empty: the balance is loaded again from the database, every charge in it.
        redis.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chat(server, key)
                break
            except openai.APIStatusError:
                time.sleep(0.1)
        api.wait_for_charges("user", user, 4)
        assert api.balance("user", user) == 1 - 4 * COST


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # cuts a database server's connection
def test_charges_wait_for_the_database_through_an_outage(backend: Backend, root_token: str) -> None:
    from tests.plugins.auth.conftest import TcpProxy

    parts = urlsplit(backend.url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    credentials = parts.netloc.rpartition("@")[0]
    url = urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}"))
    config = admin_config(
        url,
        models=MODELS,
        plugins={"billing": {"flush_seconds": 0.05}},
        database={"url": url, "connect_timeout": 1, "command_timeout": 2},
    )
    try:
        with GatewayServer(config) as server:
            api = Api(server, root_token)
            user = api.user()
            key = api.key(user_id=user)
            api.top_up("user", user, "1")
            assert chat(server, key).http_response.status_code == 200
            api.wait_for_charges("user", user, 1)
            proxy.down()
            for _ in range(3):  # the key and the balance are in memory: served, charged
                assert chat(server, key).http_response.status_code == 200
            time.sleep(0.5)
            proxy.up()
            deadline = time.monotonic() + 15
            charges: list[Any] = []
            while len(charges) < 4 and time.monotonic() < deadline:
                response = api.http.get("/billing-records", params={"owner_id": user, "kind": "charge"})
                charges = response.json()["data"] if response.status_code == 200 else []
                time.sleep(0.1)
            assert len(charges) == 4
            assert api.balance("user", user) == 1 - 4 * COST
            api.close()
    finally:
        proxy.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # cuts a database server's connection
def test_charges_survive_a_shutdown_while_the_database_is_down(
    backend: Backend, root_token: str, tmp_path: Path
) -> None:
    from tests.plugins.auth.conftest import TcpProxy

    parts = urlsplit(backend.url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    credentials = parts.netloc.rpartition("@")[0]
    url = urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}"))
    spool = tmp_path / "billing-spool"
    config = admin_config(
        url,
        models=MODELS,
        plugins={"billing": {"flush_seconds": 0.05, "spool_dir": str(spool)}},
        usage={"spool_dir": str(tmp_path / "usage-spool")},
        database={"url": url, "connect_timeout": 1, "command_timeout": 2},
    )
    try:
        with GatewayServer(config) as server:
            api = Api(server, root_token)
            user = api.user()
            key = api.key(user_id=user)
            api.top_up("user", user, "1")
            assert chat(server, key).http_response.status_code == 200
            api.wait_for_charges("user", user, 1)
            api.close()
            proxy.down()
            for _ in range(3):  # served and charged from memory; the gateway then stops
                assert chat(server, key).http_response.status_code == 200
        assert len(list(spool.rglob("*.jsonl"))) == 1  # the three charges, on disk

        proxy.up()
        with GatewayServer(config) as server:  # replays them at start-up, before loading balances
            api = Api(server, root_token)
            charges = api.charges("user", user)
            assert len(charges) == 4
            assert len({charge["request_id"] for charge in charges}) == 4
            balance = api.call("GET", f"/balances/user/{user}", 200)
            assert Decimal(balance["stored_amount"]) == 1 - 4 * COST
            assert Decimal(balance["amount"]) == 1 - 4 * COST
            assert chat(server, key).http_response.status_code == 200
            api.wait_for_charges("user", user, 5)
            api.close()
        assert list(spool.rglob("*.jsonl")) == []
    finally:
        proxy.close()
