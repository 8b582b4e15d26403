"""Deployments and routing rules managed through the admin API, served by the gateway at once."""

from __future__ import annotations

import uuid
from typing import Any

from tests.admin.conftest import Admin


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def chat(admin: Admin, model: str) -> Any:
    return admin.client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {admin.server.api_key}"},
        json={"model": model, "messages": [{"role": "user", "content": "ping"}]},
    )


def served_models(admin: Admin) -> set[str]:
    response = admin.client.get("/v1/models", headers={"Authorization": f"Bearer {admin.server.api_key}"})
    return {model["id"] for model in response.json()["data"]}


def test_a_created_deployment_is_served_at_once(admin: Admin) -> None:
    name = unique("db-model")
    assert chat(admin, name).status_code == 404
    created = admin.post(
        "/deployments",
        "write",
        json={"model_name": name, "provider": "mock", "options": {"reply": "from the database"}},
    )
    assert created.status_code == 201, created.text
    deployment = created.json()
    assert deployment["has_api_key"] is False
    assert name in served_models(admin)
    answer = chat(admin, name)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "from the database"
    assert answer.headers["x-lockgate-deployment"] == f"db:{deployment['id']}"
    # Updating it changes what is served; disabling it takes it away.
    updated = admin.patch(f"/deployments/{deployment['id']}", json={"options": {"reply": "changed"}})
    assert updated.status_code == 200, updated.text
    assert chat(admin, name).json()["choices"][0]["message"]["content"] == "changed"
    assert admin.patch(f"/deployments/{deployment['id']}", json={"enabled": False}).status_code == 200
    assert chat(admin, name).status_code == 404
    assert admin.patch(f"/deployments/{deployment['id']}", json={"enabled": True}).status_code == 200
    assert chat(admin, name).status_code == 200
    assert admin.delete(f"/deployments/{deployment['id']}", "write").status_code == 204
    assert name not in served_models(admin)
    assert chat(admin, name).status_code == 404
    assert admin.get(f"/deployments/{deployment['id']}").status_code == 404


def test_a_deployment_can_join_a_configured_model(admin: Admin) -> None:
    deployment = admin.post(
        "/deployments", json={"model_name": "mock-other", "provider": "mock", "options": {"reply": "joined"}}
    ).json()
    replies = {chat(admin, "mock-other").json()["choices"][0]["message"]["content"] for _ in range(4)}
    assert replies == {"other", "joined"}  # round robin over the configured and the new deployment
    assert admin.delete(f"/deployments/{deployment['id']}").status_code == 204
    replies = {chat(admin, "mock-other").json()["choices"][0]["message"]["content"] for _ in range(3)}
    assert replies == {"other"}


def test_bad_deployments_are_400_naming_the_field(admin: Admin) -> None:
    cases = [
        ({"model_name": "m", "provider": "no-such-provider"}, "provider"),
        ({"model_name": "m", "provider": "mock", "options": {"chunks": 0}}, "options.chunks"),
        ({"model_name": "m", "provider": "mock", "options": {"colour": "blue"}}, "options.colour"),
        ({"model_name": "m", "provider": "openai"}, "api_key"),
        ({"model_name": "m", "provider": "mock", "weight": 0}, "weight"),
        ({"model_name": "m", "provider": "mock", "timeout": {"read": -1}}, "timeout.read"),
        ({"model_name": "", "provider": "mock"}, "model_name"),
        ({"provider": "mock"}, "model_name"),
        ({"model_name": "m", "provider": "mock", "unknown": 1}, "unknown"),
    ]
    for body, param in cases:
        response = admin.post("/deployments", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, (body, response.text)
    assert "m" not in served_models(admin)
    assert admin.get("/deployments", params={"model_name": "m"}).json()["total"] == 0
    deployment = admin.post("/deployments", json={"model_name": unique("ok"), "provider": "mock"}).json()
    bad_update = admin.patch(f"/deployments/{deployment['id']}", json={"provider": "nope"})
    assert bad_update.status_code == 400 and bad_update.json()["error"]["param"] == "provider"
    assert admin.get(f"/deployments/{deployment['id']}").json()["provider"] == "mock"


def test_the_upstream_api_key_is_write_only(admin: Admin) -> None:
    upstream_key = f"sk-upstream-{uuid.uuid4().hex}"
    created = admin.post(
        "/deployments",
        json={
            "model_name": unique("keyed"),
            "provider": "openai",
            "api_key": upstream_key,
        },
    )
    assert created.status_code == 201, created.text
    deployment = created.json()
    assert deployment["has_api_key"] is True and "api_key" not in deployment
    for response in (admin.get(f"/deployments/{deployment['id']}"), admin.get("/deployments")):
        assert upstream_key not in response.text
    assert upstream_key not in admin.backend.dump()
    kept = admin.patch(f"/deployments/{deployment['id']}", json={"weight": 2})
    assert kept.status_code == 200 and kept.json()["has_api_key"] is True
    # Removing the key from a provider that needs one is refused, like a start-up with no key.
    removed = admin.patch(f"/deployments/{deployment['id']}", json={"api_key": None})
    assert removed.status_code == 400 and removed.json()["error"]["param"] == "api_key"
    assert admin.delete(f"/deployments/{deployment['id']}").status_code == 204


def test_deployments_are_global(admin: Admin) -> None:
    for who in ("org-admin", "org-read"):
        assert admin.get("/deployments", who).status_code == 403
        assert admin.get("/routing-rules", who).status_code == 403
    assert admin.post("/deployments", "read", json={"model_name": "x", "provider": "mock"}).status_code == 403
    assert admin.get("/deployments", "read").status_code == 200


def test_routing_rules(admin: Admin) -> None:
    missing = admin.post("/routing-rules", "write", json={"pattern": "nothing-*", "target": "no-such-model"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "target"
    prefix = unique("alias")
    assert chat(admin, f"{prefix}-1").status_code == 404
    rule = admin.post("/routing-rules", "write", json={"pattern": f"{prefix}-*", "target": "mock-other"})
    assert rule.status_code == 201, rule.text
    answer = chat(admin, f"{prefix}-1")
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "other"
    first = admin.post(
        "/routing-rules", json={"pattern": f"{prefix}-1", "target": "mock-echo", "priority": 1}
    )
    assert first.status_code == 201
    assert chat(admin, f"{prefix}-1").json()["choices"][0]["message"]["content"] == "ping"
    rules = admin.get("/routing-rules", params={"limit": 200}).json()["data"]
    positions = [r["id"] for r in rules if r["id"] in (rule.json()["id"], first.json()["id"])]
    assert positions == [first.json()["id"], rule.json()["id"]]  # lowest priority first
    bad = admin.patch(f"/routing-rules/{rule.json()['id']}", json={"target": "nope"})
    assert bad.status_code == 400
    assert admin.patch(f"/routing-rules/{rule.json()['id']}", json={"enabled": False}).status_code == 200
    assert chat(admin, f"{prefix}-2").status_code == 404
    for created in (rule, first):
        assert admin.delete(f"/routing-rules/{created.json()['id']}", "write").status_code == 204
    assert chat(admin, f"{prefix}-1").status_code == 404
