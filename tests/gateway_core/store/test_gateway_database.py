"""The gateway with a database: deployments and routing rules from it, reloads, readiness, outages."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway_core import Gateway, parse_config
from gateway_core.events import DEPLOYMENTS_CHANNEL, Events
from gateway_core.store.database import Database
from gateway_core.store.models import DeploymentRecord, RoutingRule
from gateway_core.store.secrets import SecretBox, generate_key
from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer

SECRET_KEY = generate_key()
BOX = SecretBox(SECRET_KEY)


def gateway_config(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "server": {"graceful_timeout": 2},
        "database": {"url": url},
        "secrets": {"key": SECRET_KEY},
        "models": {
            "mock-echo": {
                "aliases": ["mock"],
                "deployments": [{"provider": "mock", "options": {"chunks": 2}}],
            },
        },
        **extra,
    }


@pytest.fixture
def serve() -> Iterator[Callable[..., GatewayServer]]:
    """``serve(config)``: a started gateway, stopped when the test ends."""
    servers: list[GatewayServer] = []

    def start(config: dict[str, Any]) -> GatewayServer:
        server = GatewayServer(config).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def chat(server: GatewayServer, model: str, content: str = "hello") -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {DEFAULT_TEST_KEY}"},
        json={"model": model, "messages": [{"role": "user", "content": content}]},
        timeout=10,
    )


def answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def in_gateway(server: GatewayServer, coro: Any) -> Any:
    """Run a coroutine in the gateway's own event loop and wait for it."""
    assert server._loop is not None
    return asyncio.run_coroutine_threadsafe(coro, server._loop).result(10)


def eventually(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true in time")
        time.sleep(0.02)


# --- deployments from the database -------------------------------------------------------------------------


async def test_a_database_deployment_answers_through_the_gateway(
    db: Database, database_url: str, serve: Callable[..., GatewayServer]
) -> None:
    record = await db.run(
        DeploymentRecord.create(
            model_name="team-model",
            provider="mock",
            api_key_encrypted=BOX.encrypt("sk-upstream-for-team"),
            settings={"options": {"reply": "from the database"}},
        )
    )
    server = serve(gateway_config(database_url))
    response = chat(server, "team-model")
    assert answer(response) == "from the database"
    assert response.headers["x-lockgate-deployment"] == f"db:{record.id}"
    models = httpx.get(
        f"{server.base_url}/models", headers={"Authorization": f"Bearer {DEFAULT_TEST_KEY}"}
    ).json()
    assert {"mock-echo", "team-model"} <= {model["id"] for model in models["data"]}


async def test_a_database_deployment_joins_the_configured_group_of_its_name(
    db: Database, database_url: str, serve: Callable[..., GatewayServer]
) -> None:
    record = await db.run(
        DeploymentRecord.create(model_name="mock", provider="mock", settings={"options": {"reply": "db"}})
    )
    server = serve(gateway_config(database_url))
    used = {chat(server, "mock-echo").headers["x-lockgate-deployment"] for _ in range(4)}
    assert used == {"mock-echo/0", f"db:{record.id}"}  # the alias named the group: both serve it


async def test_disabled_records_are_not_served(
    db: Database, database_url: str, serve: Callable[..., GatewayServer]
) -> None:
    await db.run(DeploymentRecord.create(model_name="off-model", provider="mock", enabled=False))
    server = serve(gateway_config(database_url))
    assert chat(server, "off-model").status_code == 404


# --- routing rules --------------------------------------------------------------------------------------------


async def test_routing_rules_send_matching_names_to_a_group_by_priority(
    db: Database, database_url: str, serve: Callable[..., GatewayServer]
) -> None:
    await db.run(
        DeploymentRecord.create(
            model_name="team-model", provider="mock", settings={"options": {"reply": "team"}}
        )
    )
    await db.run(RoutingRule.create(pattern="gpt-*", target="mock-echo", priority=20))
    await db.run(RoutingRule.create(pattern="gpt-4*", target="team-model", priority=10))
    await db.run(RoutingRule.create(pattern="legacy", target="mock", priority=30))
    await db.run(RoutingRule.create(pattern="claude-*", target="mock-echo", enabled=False))
    server = serve(gateway_config(database_url))

    assert answer(chat(server, "gpt-3.5-turbo", "echoed")) == "echoed"  # gpt-* → mock-echo
    assert answer(chat(server, "gpt-4o-mini")) == "team"  # gpt-4* comes first
    assert chat(server, "legacy").headers["x-lockgate-deployment"] == "mock-echo/0"  # target an alias
    assert chat(server, "claude-3").status_code == 404  # disabled rule
    assert chat(server, "GPT-4").status_code == 404  # patterns are case-sensitive
    assert chat(server, "mock-echo").status_code == 200  # names still come first


# --- records the gateway cannot serve -----------------------------------------------------------------------


async def test_broken_records_are_skipped_with_a_log_line(
    db: Database, database_url: str, serve: Callable[..., GatewayServer], caplog: pytest.LogCaptureFixture
) -> None:
    other_key = SecretBox(generate_key())
    broken = {
        "no provider": await db.run(DeploymentRecord.create(model_name="b1", provider="no-such-provider")),
        "bad options": await db.run(
            DeploymentRecord.create(model_name="b2", provider="mock", settings={"options": {"chunks": "x"}})
        ),
        "unknown setting": await db.run(
            DeploymentRecord.create(model_name="b3", provider="mock", settings={"colour": "blue"})
        ),
        "other key": await db.run(
            DeploymentRecord.create(
                model_name="b4", provider="mock", api_key_encrypted=other_key.encrypt("sk-never-logged")
            )
        ),
    }
    bad_rule = await db.run(RoutingRule.create(pattern="x-*", target="no-such-model"))
    await db.run(
        DeploymentRecord.create(model_name="good", provider="mock", settings={"options": {"reply": "ok"}})
    )

    server = serve(gateway_config(database_url))
    assert answer(chat(server, "good")) == "ok"
    for name in ("b1", "b2", "b3", "b4"):
        assert chat(server, name).status_code == 404
    log = caplog.text
    for reason, record in broken.items():
        assert f"deployment record {record.id} skipped" in log, reason
    assert "no-such-provider" in log
    assert "colour" in log
    assert "cannot be decrypted" in log
    assert f"routing rule {bad_rule.id} skipped" in log
    assert "sk-never-logged" not in log
    assert httpx.get(f"{server.url}/ready").status_code == 200


async def test_a_credential_whose_key_cannot_be_decrypted_is_a_clear_skip(
    db: Database, database_url: str, serve: Callable[..., GatewayServer], caplog: pytest.LogCaptureFixture
) -> None:
    other_key = SecretBox(generate_key())
    good = {"id": "good", "api_key_encrypted": BOX.encrypt("sk-good-credential")}
    unreadable = await db.run(
        DeploymentRecord.create(
            model_name="c1",
            provider="mock",
            settings={
                "credentials": [good, {"id": "lost", "api_key_encrypted": other_key.encrypt("sk-lost")}]
            },
        )
    )
    in_clear = await db.run(
        DeploymentRecord.create(
            model_name="c2", provider="mock", settings={"credentials": [{"api_key": "sk-in-clear"}]}
        )
    )
    served = await db.run(
        DeploymentRecord.create(
            model_name="c3", provider="mock", settings={"credentials": [good, {"id": "shared"}]}
        )
    )
    server = serve(gateway_config(database_url))
    assert chat(server, "c1").status_code == 404
    assert chat(server, "c2").status_code == 404
    assert chat(server, "c3").headers["x-lockgate-deployment"] == f"db:{served.id}"
    log = caplog.text
    assert (
        f"deployment record {unreadable.id} skipped: the api_key of credentials[1] cannot be decrypted "
        "with secrets.key"
    ) in log
    assert f"deployment record {in_clear.id} skipped: credentials[0] holds an api_key in clear" in log
    for secret in ("sk-good-credential", "sk-lost", "sk-in-clear"):
        assert secret not in log


async def test_an_api_key_without_secrets_key_is_a_clear_skip(
    db: Database, database_url: str, serve: Callable[..., GatewayServer], caplog: pytest.LogCaptureFixture
) -> None:
    record = await db.run(
        DeploymentRecord.create(model_name="keyed", provider="mock", api_key_encrypted=BOX.encrypt("sk-x"))
    )
    pooled = await db.run(
        DeploymentRecord.create(
            model_name="pooled",
            provider="mock",
            settings={"credentials": [{"api_key_encrypted": BOX.encrypt("sk-y")}]},
        )
    )
    config = gateway_config(database_url)
    del config["secrets"]
    server = serve(config)
    assert chat(server, "keyed").status_code == 404
    assert chat(server, "pooled").status_code == 404
    assert f"deployment record {record.id} skipped" in caplog.text
    assert "secrets.key is not configured" in caplog.text
    assert (
        f"deployment record {pooled.id} skipped: credentials[0] has an encrypted api_key but "
        "secrets.key is not configured"
    ) in caplog.text


# --- reloading ---------------------------------------------------------------------------------------------------


async def test_a_publish_reloads_the_gateway_before_it_returns(
    db: Database, database_url: str, serve: Callable[..., GatewayServer]
) -> None:
    server = serve(gateway_config(database_url))
    assert chat(server, "late-model").status_code == 404
    record = await db.run(
        DeploymentRecord.create(
            model_name="late-model", provider="mock", settings={"options": {"reply": "late"}}
        )
    )
    in_gateway(server, server.gateway.events.publish(DEPLOYMENTS_CHANNEL, {}))
    assert answer(chat(server, "late-model")) == "late"

    await db.run(DeploymentRecord.filter(id=record.id).update(enabled=False))
    assert in_gateway(server, server.gateway.reload_models()) is True
    assert chat(server, "late-model").status_code == 404


async def test_every_replica_reloads_after_a_publish_through_redis(
    db: Database, database_url: str, redis_url: str, serve: Callable[..., GatewayServer]
) -> None:
    replicas = [serve(gateway_config(database_url, redis={"url": redis_url})) for _ in range(2)]
    await db.run(
        DeploymentRecord.create(
            model_name="shared-model", provider="mock", settings={"options": {"reply": "hi"}}
        )
    )
    admin = Events(redis_url)  # e.g. the admin API of a third replica
    await admin.start()
    try:
        await admin.publish(DEPLOYMENTS_CHANNEL, {})
    finally:
        await admin.stop()
    for replica in replicas:
        eventually(lambda replica=replica: chat(replica, "shared-model").status_code == 200, 1.0)  # type: ignore[misc]
        assert httpx.get(f"{replica.url}/ready").json()["events"] == "ok"


async def test_requests_in_flight_keep_the_deployment_they_started_with(
    db: Database, database_url: str, serve: Callable[..., GatewayServer]
) -> None:
    record = await db.run(
        DeploymentRecord.create(
            model_name="slow-model",
            provider="mock",
            settings={"options": {"reply": "done", "latency_ms": 400}},
        )
    )
    server = serve(gateway_config(database_url))
    results: list[httpx.Response] = []
    request = threading.Thread(target=lambda: results.append(chat(server, "slow-model")))
    request.start()
    slow = server.gateway.models["slow-model"].deployments[0]
    eventually(lambda: slow.in_flight == 1)  # the request is waiting on the deployment
    await db.run(DeploymentRecord.filter(id=record.id).delete())
    in_gateway(server, server.gateway.reload_models())
    assert chat(server, "slow-model").status_code == 404  # new requests: gone
    request.join(5)
    assert answer(results[0]) == "done"  # the one in flight finished


# --- readiness and outages ------------------------------------------------------------------------------------------


async def test_ready_reports_the_database(
    db: Database, database_url: str, serve: Callable[..., GatewayServer]
) -> None:
    server = serve(gateway_config(database_url))
    response = httpx.get(f"{server.url}/ready")
    assert response.status_code == 200
    body = response.json()
    assert {key: body[key] for key in ("status", "models", "database")} == {
        "status": "ready",
        "models": 1,
        "database": "ok",
    }
    assert body["usage"]["dropped"] == 0


def test_traffic_goes_on_when_the_database_is_unreachable(
    refused_port: int, serve: Callable[..., GatewayServer], caplog: pytest.LogCaptureFixture
) -> None:
    config = gateway_config(f"postgres://lockgate:pw-not-in-logs@127.0.0.1:{refused_port}/lockgate")
    config["database"]["connect_timeout"] = 1
    server = serve(config)
    assert answer(chat(server, "mock-echo", "still here")) == "still here"
    response = httpx.get(f"{server.url}/ready")
    assert response.status_code == 200  # stay in the load balancer: the configuration still serves
    assert response.json()["status"] == "degraded"
    assert response.json()["database"] == "unavailable"
    assert "unreachable at start-up" in caplog.text
    assert "pw-not-in-logs" not in caplog.text


def test_an_in_memory_database_needs_no_migration_step(serve: Callable[..., GatewayServer]) -> None:
    server = serve(gateway_config("sqlite://:memory:"))
    assert httpx.get(f"{server.url}/ready").json()["database"] == "ok"


async def test_without_a_database_section_there_is_no_database() -> None:
    gateway = Gateway(parse_config({"models": {"m": {"deployments": [{"provider": "mock"}]}}}))
    assert gateway.database is None
    assert gateway.secret_box is None
    assert gateway.events.mode == "local"
    await gateway.start()
    try:
        assert await gateway.reload_models() is False
        assert gateway.readiness() == (True, {"status": "ready", "models": 1})
    finally:
        await gateway.stop()
