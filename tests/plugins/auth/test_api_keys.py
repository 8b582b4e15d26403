"""The ``api_keys`` auth plugin end to end: keys stored in SQLite and in PostgreSQL, gateways served by
hypercorn, called with the official ``openai`` SDK (and raw headers where the SDK cannot)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai
import pytest

from gateway_core import ConfigError, RequestContext, hookimpl
from gateway_core.store import keys, users
from gateway_core.store.database import DatabaseUnavailable
from gateway_core.store.models import ApiKey, Organization, User
from gateway_core.testing import GatewayServer
from tests.plugins.auth.gateways import (
    DLP_SECTION,
    HELLO,
    DlpSpy,
    chat,
    gateway_config,
    is_refused,
    refused,
    wait_until,
    wait_until_listening,
)


def in_gateway(server: GatewayServer, operation: Callable[[], Any]) -> Any:
    """Await ``operation()`` in the gateway's own event loop, with its database active."""
    assert server._loop is not None
    database = server.gateway.database
    assert database is not None

    async def run() -> Any:
        return await database.run(operation())

    return asyncio.run_coroutine_threadsafe(run(), server._loop).result(10)


# --- accepting keys ----------------------------------------------------------------------------------------


def test_a_database_key_authenticates_as_bearer_and_x_api_key(store: Any, lockgate_server: Any) -> None:
    _, secret = store(lambda: keys.create_key("ci"))
    server = lockgate_server(gateway_config(store.url))

    assert chat(server, secret)
    for header in ("X-API-Key", "x-api-key"):
        response = httpx.post(
            f"{server.base_url}/chat/completions",
            headers={header: secret},
            json={"model": "mock-echo", "messages": HELLO},
            timeout=10,
        )
        assert response.status_code == 200, response.text
    # Keys from the configuration keep working beside the database's.
    assert chat(server, server.api_key)


def test_an_unknown_key_gets_401(store: Any, lockgate_server: Any) -> None:
    server = lockgate_server(gateway_config(store.url))

    assert refused(server, keys.generate_key()) == (401, "Incorrect API key provided.")
    assert refused(server, "not-even-a-lockgate-key") == (401, "Incorrect API key provided.")


def test_an_expired_key_gets_401_saying_so(store: Any, lockgate_server: Any) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    _, expiring = store(lambda: keys.create_key("expiring", expires_at=soon))
    record, expired = store(
        lambda: keys.create_key("expired", expires_at=datetime.now(UTC) + timedelta(days=1))
    )
    store(lambda: ApiKey.filter(id=record.id).update(expires_at=datetime.now(UTC) - timedelta(minutes=1)))
    server = lockgate_server(gateway_config(store.url))

    assert refused(server, expired) == (401, "This API key has expired.")
    assert chat(server, expiring)
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    # Expiry is checked on every request, also for a key served from the cache.
    assert refused(server, expiring) == (401, "This API key has expired.")


def test_a_revoked_key_gets_401_saying_so(store: Any, lockgate_server: Any) -> None:
    record, secret = store(lambda: keys.create_key("old"))
    store(lambda: keys.revoke_key(record.prefix))
    server = lockgate_server(gateway_config(store.url))

    assert refused(server, secret) == (401, "This API key has been revoked.")


def test_the_key_of_a_disabled_user_gets_403(store: Any, lockgate_server: Any) -> None:
    async def disabled_owner_key() -> str:
        user = await users.create_user("gone@example.com")
        await User.filter(id=user.id).update(is_active=False)
        return (await keys.create_key("theirs", user=user))[1]

    secret = store(disabled_owner_key)
    server = lockgate_server(gateway_config(store.url))

    assert refused(server, secret) == (403, "The user who owns this API key is disabled.")


def test_a_model_restricted_key_gets_403_for_other_models(store: Any, lockgate_server: Any) -> None:
    _, secret = store(lambda: keys.create_key("mock only", models=["mock-*"]))
    server = lockgate_server(gateway_config(store.url))

    assert chat(server, secret, "mock-echo")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(server, secret, "gpt-4o")
    assert caught.value.code == "model_not_allowed"
    assert caught.value.response.json()["error"]["message"] == (
        "This API key is not allowed to use the model `gpt-4o`."
    )


def test_the_principal_carries_owner_limits_and_budgets(store: Any, lockgate_server: Any) -> None:
    seen: list[Any] = []

    class Spy:
        @hookimpl
        def lockgate_policy_check(self, ctx: RequestContext) -> None:
            seen.append(ctx.principal)

    async def key_of_org_user() -> tuple[ApiKey, str, User, Organization]:
        org = await Organization.create(name="acme", budget_limit=500, budget_period="month")
        user = await users.create_user("dev@acme.example", org=org)
        key, secret = await keys.create_key(
            "dev",
            user=user,
            models=["mock-*"],
            scopes=["chat"],
            metadata={"team": "search"},
            rpm_limit=60,
            tpm_limit=10_000,
            max_parallel=4,
            budget_limit=12.5,
            budget_period="day",
        )
        return key, secret, user, org

    key, secret, user, org = store(key_of_org_user)
    server = lockgate_server(gateway_config(store.url), extra_plugins=[("spy", Spy())])
    chat(server, secret)

    (principal,) = seen
    assert principal.key_id == str(key.id)
    assert principal.name == "dev"
    assert principal.user_id == str(user.id)
    assert principal.org_id == str(org.id)  # the user's organization, as the key has none of its own
    assert principal.allowed_models == ("mock-*",)
    assert principal.scopes == frozenset({"chat"})
    assert principal.metadata["team"] == "search"
    assert principal.metadata["key_prefix"] == key.prefix
    assert principal.metadata["user_email"] == "dev@acme.example"
    assert principal.metadata["org_name"] == "acme"
    assert principal.metadata["limits"] == {"rpm": 60, "tpm": 10_000, "max_parallel": 4}
    assert principal.metadata["budgets"] == {
        "key": {"limit": 12.5, "period": "day"},
        "user": {"limit": None, "period": None},
        "org": {"limit": 500.0, "period": "month"},
    }


def test_the_principal_carries_the_dlp_overrides_of_its_key_organization_and_ancestors(
    store: Any, lockgate_server: Any
) -> None:
    spy = DlpSpy()
    key_dlp = {"entities": {"EMAIL_ADDRESS": "mask"}, "filters": ["emails"]}
    team_dlp = {"direction": "both"}
    top_dlp = {"entities": {"*": "log"}, "on_error": "allow"}

    async def keys_in_a_tree() -> tuple[str, str, str]:
        top = await Organization.create(name="top", metadata={"dlp": top_dlp})
        middle = await Organization.create(name="middle", parent_id=top.id, metadata={"limits": {"rpm": 9}})
        team = await Organization.create(name="team", parent_id=middle.id, metadata={"dlp": team_dlp})
        _, own = await keys.create_key("own", org=team, metadata={"dlp": key_dlp, "team": "search"})
        _, inherits = await keys.create_key("inherits", org=team)
        # Written by hand: a `dlp` that is no override, and an `org_dlp` the key has no business setting.
        _, odd = await keys.create_key("odd", metadata={"dlp": "mask it all", "org_dlp": {"enabled": False}})
        return own, inherits, odd

    own, inherits, odd = store(keys_in_a_tree)
    server = lockgate_server(gateway_config(store.url) | {"dlp": DLP_SECTION}, extra_plugins=[("spy", spy)])
    for secret in (own, inherits, odd):
        chat(server, secret)

    with_own, without_own, loose = spy.principals
    assert with_own.metadata["dlp"] == key_dlp
    assert with_own.metadata["team"] == "search"
    for principal in (with_own, without_own):
        assert principal.metadata["org_dlp"] == team_dlp
        ancestors = principal.metadata["org_ancestors"]
        assert [(a["name"], a["dlp"]) for a in ancestors] == [("middle", None), ("top", top_dlp)]
        assert ancestors[0]["limits"] == {"rpm": 9}
    assert "dlp" not in without_own.metadata
    assert "dlp" not in loose.metadata and "org_dlp" not in loose.metadata
    assert loose.metadata["org_ancestors"] == []


# --- revocation ----------------------------------------------------------------------------------------------


def test_revocation_reaches_a_second_gateway_within_a_second(
    store: Any, redis_url: str, lockgate_server: Any
) -> None:
    _, secret = store(lambda: keys.create_key("shared"))
    config = gateway_config(store.url, redis_url=redis_url, cache_ttl_seconds=300)
    first, second = lockgate_server(config), lockgate_server(config)
    assert chat(first, secret) and chat(second, secret)  # cached by both
    wait_until_listening(second, first)

    # What the admin API does: revoke through the gateway's events bus.
    in_gateway(first, lambda: keys.revoke_key(secret, events=first.gateway.events))

    assert is_refused(first, secret)  # its own subscribers ran before publish returned
    with httpx.Client(base_url=second.base_url, headers={"Authorization": f"Bearer {secret}"}) as http:

        def second_refuses() -> bool:
            response = http.post("/chat/completions", json={"model": "mock-echo", "messages": HELLO})
            return response.status_code == 401

        assert wait_until(second_refuses, seconds=1.0) < 1.0


def test_without_events_a_revoked_key_is_refused_once_its_cache_entry_expires(
    store: Any, lockgate_server: Any
) -> None:
    record, secret = store(lambda: keys.create_key("cached"))
    server = lockgate_server(gateway_config(store.url, cache_ttl_seconds=0.5))
    assert chat(server, secret)

    store(lambda: keys.revoke_key(record.prefix))  # another process, no events bus: nobody is told

    assert chat(server, secret)  # still cached
    wait_until(lambda: is_refused(server, secret), seconds=2.0, step=0.1)
    assert refused(server, secret) == (401, "This API key has been revoked.")


# --- database outages ----------------------------------------------------------------------------------------


def _failing_run_switch(server: GatewayServer) -> Callable[[bool], None]:
    """Switch the gateway's SQLite database off (every query fails as in an outage) and on again."""
    database = server.gateway.database
    assert database is not None
    real_run = database.run

    async def unreachable(operation: Any, **options: Any) -> Any:
        if asyncio.iscoroutine(operation):
            operation.close()
        raise DatabaseUnavailable("simulated outage")

    def switch(up: bool) -> None:
        database.run = real_run if up else unreachable  # type: ignore[method-assign]

    return switch


def test_cached_keys_keep_working_while_the_database_is_unreachable(
    store: Any, lockgate_server: Any, tcp_proxy: Any
) -> None:
    warm_record, warm = store(lambda: keys.create_key("warm"))
    _, cold = store(lambda: keys.create_key("cold"))
    options = {"cache_ttl_seconds": 0.3, "negative_cache_seconds": 0, "last_used_flush_seconds": 0.2}
    if store.url.startswith("postgres"):
        parts = urlsplit(store.url)
        proxy = tcp_proxy(parts.hostname, parts.port or 5432)
        netloc = parts.netloc.rsplit("@", 1)
        through_proxy = (
            f"{netloc[0]}@127.0.0.1:{proxy.port}" if len(netloc) == 2 else f"127.0.0.1:{proxy.port}"
        )
        url = urlunsplit(parts._replace(netloc=through_proxy))
        server = lockgate_server(gateway_config(url, **options))
        database = proxy.switch
    else:
        server = lockgate_server(gateway_config(store.url, **options))
        database = _failing_run_switch(server)

    assert chat(server, warm)
    database(False)
    time.sleep(0.5)  # past the cache TTL: the entry is stale and cannot be refreshed
    used_during_outage = datetime.now(UTC)

    for _ in range(5):
        assert chat(server, warm)
    with pytest.raises(openai.InternalServerError) as caught:
        chat(server, cold)
    assert caught.value.status_code == 503
    assert caught.value.code == "auth_unavailable"
    assert "database is unreachable" in caught.value.response.json()["error"]["message"]
    assert caught.value.response.headers["retry-after"]
    time.sleep(0.5)  # flushes came and went: the uses wait in memory for the database
    assert str(warm_record.id) in server.gateway.plugin_state["api_keys"].used

    # Revoked while the gateway could not see it (and nobody told it): refused once it can look again.
    store(lambda: keys.revoke_key(warm_record.prefix))
    assert chat(server, warm)
    database(True)
    wait_until(lambda: is_refused(server, warm), seconds=8.0, step=0.1)
    wait_until(lambda: _works(server, cold), seconds=8.0, step=0.1)

    # The uses during the outage were kept and written once the database was back.
    def last_used() -> datetime | None:
        return store(lambda: ApiKey.get(id=warm_record.id)).last_used_at  # type: ignore[no-any-return]

    wait_until(lambda: (last_used() or used_during_outage) > used_during_outage, seconds=5.0, step=0.2)


def _works(server: GatewayServer, key: str) -> bool:
    try:
        return bool(chat(server, key))
    except openai.APIStatusError:
        return False


# --- what reaches the database ----------------------------------------------------------------------------------


def _count_lookups(server: GatewayServer, delay: float = 0.0) -> list[str]:
    """Record the key lookups (SELECTs) the gateway runs, each made ``delay`` seconds slower."""
    database = server.gateway.database
    assert database is not None
    real_run = database.run
    lookups: list[str] = []

    async def counting(operation: Any, **options: Any) -> Any:
        if type(operation).__name__ != "UpdateQuery":
            lookups.append(type(operation).__name__)
            await asyncio.sleep(delay)
        return await real_run(operation, **options)

    database.run = counting  # type: ignore[method-assign]
    return lookups


def test_cached_and_unknown_keys_cost_no_query_and_concurrent_misses_share_one(
    store: Any, lockgate_server: Any
) -> None:
    _, warm = store(lambda: keys.create_key("warm"))
    _, cold = store(lambda: keys.create_key("cold"))
    config = gateway_config(store.url, negative_cache_seconds=30)
    config["usage"] = {"enabled": False}  # the usage log's writes are not key lookups
    server = lockgate_server(config)
    assert chat(server, warm)
    lookups = _count_lookups(server, delay=0.3)

    for _ in range(10):
        assert chat(server, warm)
    assert lookups == []

    unknown = keys.generate_key()
    for _ in range(3):
        assert refused(server, unknown)[0] == 401
    assert len(lookups) == 1  # then remembered as unknown

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: chat(server, cold), range(8)))
    assert all(answers)
    assert len(lookups) == 2  # eight requests, one lookup


# --- last_used_at --------------------------------------------------------------------------------------------


def _count_updates(server: GatewayServer) -> list[str]:
    """Record the UPDATE queries the gateway runs through its database."""
    database = server.gateway.database
    assert database is not None
    real_run = database.run
    updates: list[str] = []

    def counting(operation: Any, **options: Any) -> Any:
        if type(operation).__name__ == "UpdateQuery":
            updates.append(str(operation.sql()))
        return real_run(operation, **options)

    database.run = counting  # type: ignore[method-assign]
    return updates


def test_last_used_at_is_written_in_batches_not_per_request(store: Any, lockgate_server: Any) -> None:
    first_record, first = store(lambda: keys.create_key("first"))
    second_record, second = store(lambda: keys.create_key("second"))
    server = lockgate_server(gateway_config(store.url, last_used_flush_seconds=60))
    updates = _count_updates(server)
    started = datetime.now(UTC)

    for _ in range(10):
        chat(server, first)
    for _ in range(5):
        chat(server, second)

    assert updates == []
    assert store(lambda: ApiKey.get(id=first_record.id)).last_used_at is None
    server.stop()  # shutdown flushes: one UPDATE per key
    assert len(updates) == 2
    for record in (first_record, second_record):
        last_used = store(lambda record=record: ApiKey.get(id=record.id)).last_used_at
        assert last_used is not None
        assert started - timedelta(seconds=1) <= last_used <= datetime.now(UTC)


def test_last_used_at_is_flushed_every_few_seconds(store: Any, lockgate_server: Any) -> None:
    record, secret = store(lambda: keys.create_key("busy"))
    server = lockgate_server(gateway_config(store.url, last_used_flush_seconds=0.3))

    chat(server, secret)

    wait_until(lambda: store(lambda: ApiKey.get(id=record.id)).last_used_at is not None, seconds=3, step=0.2)


# --- configuration -------------------------------------------------------------------------------------------


def test_bad_options_stop_start_up_naming_the_key(store: Any) -> None:
    server = GatewayServer(gateway_config(store.url, cache_ttl_seconds=0))
    with pytest.raises(ConfigError, match=r"plugins\.api_keys\.cache_ttl_seconds"):
        server.start()
