"""Two gateways sharing one database and Redis: what the admin API changes on one reaches the other."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from gateway_core.testing import GatewayServer
from tests.admin.conftest import ROOT_EMAIL, ROOT_PASSWORD, _migrate_and_seed, admin_config
from tests.services import redis_url
from tests.waiting import eventually


def _redis_url() -> str:
    """The test Redis (skipped when its variable is unset), which must then answer."""
    url = redis_url()

    async def ping() -> None:
        import coredis

        client = coredis.Redis.from_url(url, connect_timeout=2)
        async with client:
            await client.ping()

    asyncio.run(ping())
    return url


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, httpx.Client, str]]:
    redis = _redis_url()
    url = f"sqlite://{tmp_path_factory.mktemp('replicas') / 'lockgate.db'}"
    _migrate_and_seed(url)
    config = admin_config(url, secrets_key=Fernet.generate_key().decode(), redis={"url": redis})
    with (
        GatewayServer(config) as first,
        GatewayServer(config) as second,
        httpx.Client(base_url=first.url, timeout=30) as a,
        httpx.Client(base_url=second.url, timeout=30) as b,
    ):
        yield a, b, first.api_key


def login(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/admin/api/auth/login", json={"email": ROOT_EMAIL, "password": ROOT_PASSWORD})
    assert response.status_code == 200, response.text
    return dict(response.json())


def chat(client: httpx.Client, key: str, model: str = "mock") -> int:
    response = client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
    )
    return response.status_code


def test_a_key_revoked_on_one_gateway_stops_on_the_other(
    replicas: tuple[httpx.Client, httpx.Client, str],
) -> None:
    a, b, _ = replicas
    headers = {"Authorization": f"Bearer {login(a)['access_token']}"}
    key = a.post("/admin/api/keys", headers=headers, json={"name": "shared"}).json()
    assert chat(b, key["secret"]) == 200  # cached by the second gateway now
    assert b.get("/admin/api/keys", headers=headers).status_code == 200  # one token, both gateways
    assert a.post(f"/admin/api/keys/{key['id']}/revoke", headers=headers).status_code == 200
    eventually(lambda: chat(b, key["secret"]) == 401, timeout=5.0, what="the revocation reaching the other")


def test_a_refresh_token_used_on_one_gateway_is_refused_by_the_other(
    replicas: tuple[httpx.Client, httpx.Client, str],
) -> None:
    a, b, _ = replicas
    pair = login(a)
    headers = {"Authorization": f"Bearer {pair['access_token']}"}
    marker = a.post("/admin/api/keys", headers=headers, json={"name": "marker"}).json()
    assert chat(b, marker["secret"]) == 200  # cached by the second gateway
    assert a.post("/admin/api/auth/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 200
    # Announced after the token's use on the same Redis: once the second gateway has it, it has both.
    assert a.post(f"/admin/api/keys/{marker['id']}/revoke", headers=headers).status_code == 200
    eventually(
        lambda: chat(b, marker["secret"]) == 401, timeout=5.0, what="the announcements reaching the other"
    )
    again = b.post("/admin/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert again.status_code == 401


def test_a_deployment_created_on_one_gateway_is_served_by_the_other(
    replicas: tuple[httpx.Client, httpx.Client, str],
) -> None:
    a, b, gateway_key = replicas
    headers = {"Authorization": f"Bearer {login(a)['access_token']}"}
    created = a.post(
        "/admin/api/deployments", headers=headers, json={"model_name": "replicated", "provider": "mock"}
    )
    assert created.status_code == 201, created.text
    eventually(lambda: chat(b, gateway_key, "replicated") == 200, what="the deployment served by the other")
    assert a.delete(f"/admin/api/deployments/{created.json()['id']}", headers=headers).status_code == 204
    eventually(lambda: chat(b, gateway_key, "replicated") == 404, what="the deletion reaching the other")
