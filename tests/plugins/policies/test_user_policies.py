"""Limits and quotas of a user, set in the user's metadata through the admin API, applied by a real
gateway to every key of the user; a change of the metadata takes effect at once."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway_core.testing import GatewayServer
from tests.admin.conftest import ROOT_EMAIL, ROOT_PASSWORD, admin_config

HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]


class Admin:
    """The admin API of a gateway, logged in as an admin seeded in its database."""

    def __init__(self, server: GatewayServer) -> None:
        self.http = httpx.Client(base_url=server.url + "/admin/api", timeout=30)
        login = self.http.post("/auth/login", json={"email": ROOT_EMAIL, "password": ROOT_PASSWORD})
        assert login.status_code == 200, login.text
        self.http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"

    def user(self, metadata: dict[str, Any]) -> str:
        body = {"email": f"dev-{uuid.uuid4().hex[:8]}@example.com", "metadata": metadata}
        response = self.http.post("/users", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def key(self, user_id: str) -> str:
        response = self.http.post("/keys", json={"name": f"key-{uuid.uuid4().hex[:8]}", "user_id": user_id})
        assert response.status_code == 201, response.text
        return str(response.json()["secret"])

    def set_metadata(self, user_id: str, metadata: dict[str, Any]) -> None:
        response = self.http.patch(f"/users/{user_id}", json={"metadata": metadata})
        assert response.status_code == 200, response.text


@pytest.fixture
def gateway(
    serve: Callable[..., GatewayServer], store: Callable[..., Any], database_url: str
) -> Iterator[tuple[GatewayServer, Admin]]:
    """A gateway on a new database with the admin API, and that API logged in."""
    from gateway_core.store import users
    from gateway_core.store.models import Role

    store(lambda: users.create_user(ROOT_EMAIL, ROOT_PASSWORD, Role.ADMIN))
    server = serve(admin_config(database_url))
    admin = Admin(server)
    yield server, admin
    admin.http.close()


def chat(server: GatewayServer, key: str) -> httpx.Headers:
    with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=10) as client:
        raw = client.chat.completions.with_raw_response.create(model="mock-echo", messages=HELLO)
    raw.parse()
    return raw.headers


def refusal(server: GatewayServer, key: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        chat(server, key)
    return caught.value


def test_a_users_rpm_limit_refuses_the_third_request_of_its_keys(
    gateway: tuple[GatewayServer, Admin],
) -> None:
    server, admin = gateway
    user = admin.user({"limits": {"rpm": 2}})
    first, second = admin.key(user), admin.key(user)

    headers = chat(server, first)
    assert headers["x-ratelimit-limit-requests"] == "2"  # the user's limit, from its metadata
    assert headers["x-ratelimit-remaining-requests"] == "1"
    chat(server, second)  # another key of the same user counts against the same limit

    error = refusal(server, first)
    assert isinstance(error, openai.RateLimitError)
    body = error.response.json()["error"]
    assert (body["type"], body["code"]) == ("requests", "rate_limit_exceeded")
    assert body["message"].startswith(
        f"Rate limit reached for user '{user}' on requests per min (RPM): Limit 2, Used 2, Requested 1."
    )
    assert int(error.response.headers["retry-after"]) >= 1
    assert refusal(server, second).status_code == 429
    # Another user's keys are not limited by it.
    other = admin.key(admin.user({}))
    for _ in range(3):
        chat(server, other)


def test_a_users_quota_refuses_with_insufficient_quota(gateway: tuple[GatewayServer, Admin]) -> None:
    server, admin = gateway
    user = admin.user({"quotas": {"requests": {"day": 1}}})
    key = admin.key(user)
    chat(server, key)

    error = refusal(server, key)
    assert error.status_code == 429
    body = error.response.json()["error"]
    assert (body["type"], body["code"]) == ("insufficient_quota", "quota_exceeded")
    assert body["message"].startswith(
        f"Quota exceeded for user '{user}' on requests per day: Limit 1, Used 1, Requested 1."
    )
    assert int(error.response.headers["retry-after"]) >= 1  # until midnight UTC


def test_new_user_metadata_applies_to_cached_keys_at_once(gateway: tuple[GatewayServer, Admin]) -> None:
    server, admin = gateway
    user = admin.user({})
    key = admin.key(user)
    for _ in range(3):  # no limit yet; the key is cached by the gateway from the first request
        assert "x-ratelimit-limit-requests" not in chat(server, key)

    # A new quota counts what was used before it was set (from the usage records): one more request.
    admin.set_metadata(user, {"quotas": {"requests": {"total": 4}}})
    chat(server, key)
    error = refusal(server, key)
    assert error.response.json()["error"]["code"] == "quota_exceeded"
    assert "Limit 4, Used 4" in error.response.json()["error"]["message"]

    admin.set_metadata(user, {})  # lifted again
    chat(server, key)


def test_a_parent_organizations_new_quota_applies_to_cached_keys_below_it_at_once(
    gateway: tuple[GatewayServer, Admin],
) -> None:
    server, admin = gateway
    root = admin.http.post("/organizations", json={"name": f"root-{uuid.uuid4().hex[:6]}"}).json()["id"]
    team = admin.http.post("/organizations", json={"name": "team", "parent_id": root}).json()["id"]
    created = admin.http.post("/keys", json={"name": "team-key", "org_id": team})
    assert created.status_code == 201, created.text
    key = created.json()["secret"]
    chat(server, key)  # cached by the gateway, with no quota yet

    quota = {"metadata": {"quotas": {"requests": {"total": 2}}}}  # the request made before counts
    assert admin.http.patch(f"/organizations/{root}", json=quota).status_code == 200
    chat(server, key)
    error = refusal(server, key)
    assert error.response.json()["error"]["message"].startswith("Quota exceeded for organization 'root-")
