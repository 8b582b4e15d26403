"""``GET /admin/api/deployments/health``: who may read it and what it shows."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from gateway_core.admin.health import DeploymentHealthList
from gateway_core.testing import GatewayServer
from tests.admin.conftest import ROOT_EMAIL, ROOT_PASSWORD, Admin, Backend, admin_config


@pytest.fixture(scope="module")
def admin(backend: Backend, refused_port: int) -> Iterator[Admin]:
    """A gateway checking a mock deployment and one whose upstream refuses connections (every 0.1 s).

    Logged in: ``root``, ``read`` (unbound) and ``org-read`` (bound to an organization).
    """
    models = {
        "mock-echo": {"deployments": [{"provider": "mock"}]},
        "gpt-down": {
            "deployments": [
                {
                    "provider": "openai",
                    "base_url": f"http://127.0.0.1:{refused_port}/v1",
                    "api_key": "sk-upstream-never-reached-0123456789",
                }
            ]
        },
    }
    health = {"active": {"enabled": True, "interval": 0.1, "timeout": 2}}
    config = admin_config(backend.url, models=models, health=health)
    with (
        GatewayServer(config) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        state = Admin(server, backend, client)
        state.tokens["root"] = state.login(ROOT_EMAIL, ROOT_PASSWORD)["access_token"]
        org = state.post("/organizations", json={"name": "health-org"})
        assert org.status_code == 201, org.text
        for who, org_id in (("read", None), ("org-read", org.json()["id"])):
            email = f"{who}-health@example.com"
            state.create_user(email, "read", org_id)
            state.tokens[who] = state.login(email, "user-password-for-tests")["access_token"]
        yield state


def health(admin: Admin, who: str | None = "root") -> httpx.Response:
    return admin.get("/deployments/health", who)


def rows(admin: Admin) -> dict[str, dict[str, Any]]:
    response = health(admin)
    assert response.status_code == 200, response.text
    return {item["id"]: item for item in response.json()["data"]}


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true in time")
        time.sleep(0.05)


def test_a_token_is_needed(admin: Admin) -> None:
    response = health(admin, None)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_token"


@pytest.mark.parametrize("who", ["root", "read", "org-read"])
def test_every_logged_in_user_may_read_it(admin: Admin, who: str) -> None:
    response = health(admin, who)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    DeploymentHealthList.model_validate(response.json())


def test_it_shows_open_breakers_and_check_results(admin: Admin) -> None:
    eventually(lambda: rows(admin)["gpt-down/0"]["state"] == "open")
    eventually(lambda: rows(admin)["mock-echo/0"]["last_check"] is not None)
    data = rows(admin)
    assert set(data) == {"mock-echo/0", "gpt-down/0"}

    down = data["gpt-down/0"]
    assert down["model_name"] == "gpt-down"
    assert down["provider"] == "openai"
    assert down["last_error"] == "connection"
    assert down["active_checks"] is True
    assert down["last_check"]["ok"] is False
    assert "connect" in down["last_check"]["error"].lower()
    assert "sk-upstream" not in str(down)
    since, until = datetime.fromisoformat(down["since"]), datetime.fromisoformat(down["until"])
    assert 0 < (until - since).total_seconds() <= 30  # the first opening: the base cooldown

    mock = data["mock-echo/0"]
    assert mock["state"] == "closed"
    assert mock["until"] is None
    assert mock["last_check"]["ok"] is True
    assert mock["last_check"]["error"] is None
    assert mock["outlier_ejected"] is False


def test_deployments_added_at_run_time_come_and_go(admin: Admin) -> None:
    created = admin.post("/deployments", json={"model_name": "team-model", "provider": "mock"})
    assert created.status_code == 201, created.text
    deployment_id = f"db:{created.json()['id']}"
    eventually(lambda: deployment_id in rows(admin))
    assert rows(admin)[deployment_id]["model_name"] == "team-model"
    assert admin.delete(f"/deployments/{created.json()['id']}").status_code == 204
    eventually(lambda: deployment_id not in rows(admin))


def test_the_document_describes_it(admin: Admin) -> None:
    spec = admin.client.get("/admin/openapi.json").json()
    entry = spec["paths"]["/admin/api/deployments/health"]["get"]
    assert entry["x-lockgate-role"] == "read"
    assert entry["x-lockgate-org-scoped"] is True
    schema = entry["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/DeploymentHealthList"}
    item = spec["components"]["schemas"]["DeploymentHealth"]
    assert item["properties"]["state"]["enum"] == ["closed", "open", "half_open", "cooling_down"]
