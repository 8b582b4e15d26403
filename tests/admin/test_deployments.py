"""Deployments and routing rules managed through the admin API, served by the gateway at once."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from tests.admin.conftest import Admin
from tests.fakes import FakeOpenAI


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


def test_bad_deployments_are_400_or_422_naming_the_field(admin: Admin) -> None:
    # 400: the OpenAPI document refuses it; 422: well-formed, but the provider refuses it.
    cases = [
        ({"model_name": "m", "provider": "no-such-provider"}, "provider", 422),
        ({"model_name": "m", "provider": "mock", "options": {"chunks": 0}}, "options.chunks", 422),
        ({"model_name": "m", "provider": "mock", "options": {"colour": "blue"}}, "options.colour", 422),
        ({"model_name": "m", "provider": "openai"}, "api_key", 422),
        ({"model_name": "m", "provider": "mock", "weight": 0}, "weight", 400),
        ({"model_name": "m", "provider": "mock", "weight": True}, "weight", 400),
        ({"model_name": "m", "provider": "mock", "timeout": {"read": -1}}, "timeout.read", 400),
        ({"model_name": "", "provider": "mock"}, "model_name", 400),
        ({"model_name": " ", "provider": "mock"}, "model_name", 400),
        ({"model_name": "m" * 201, "provider": "mock"}, "model_name", 400),
        ({"model_name": "m", "provider": "mock", "base_url": "http://x/" + "a" * 1000}, "base_url", 400),
        ({"provider": "mock"}, "model_name", 400),
        ({"model_name": "m", "provider": "mock", "unknown": 1}, "unknown", 400),
    ]
    for body, param, status in cases:
        response = admin.post("/deployments", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["param"] == param, (body, response.text)
    assert "m" not in served_models(admin)
    assert admin.get("/deployments", params={"model_name": "m"}).json()["total"] == 0
    deployment = admin.post("/deployments", json={"model_name": unique("ok"), "provider": "mock"}).json()
    bad_update = admin.patch(f"/deployments/{deployment['id']}", json={"provider": "nope"})
    assert bad_update.status_code == 422 and bad_update.json()["error"]["param"] == "provider"
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
    assert removed.status_code == 422 and removed.json()["error"]["param"] == "api_key"
    assert admin.delete(f"/deployments/{deployment['id']}").status_code == 204


def test_deployments_are_global(admin: Admin) -> None:
    for who in ("org-admin", "org-read"):
        assert admin.get("/deployments", who).status_code == 403
        assert admin.get("/routing-rules", who).status_code == 403
    assert admin.post("/deployments", "read", json={"model_name": "x", "provider": "mock"}).status_code == 403
    assert admin.get("/deployments", "read").status_code == 200


def test_routing_rules(admin: Admin) -> None:
    missing = admin.post("/routing-rules", "write", json={"pattern": "nothing-*", "target": "no-such-model"})
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "target"
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
    assert bad.status_code == 422
    assert admin.patch(f"/routing-rules/{rule.json()['id']}", json={"priority": None}).status_code == 400
    assert admin.patch(f"/routing-rules/{rule.json()['id']}", json={"enabled": False}).status_code == 200
    assert chat(admin, f"{prefix}-2").status_code == 404
    for created in (rule, first):
        assert admin.delete(f"/routing-rules/{created.json()['id']}", "write").status_code == 204
    assert chat(admin, f"{prefix}-1").status_code == 404


# --- every setting of a configured deployment --------------------------------------------------------------


def test_every_setting_of_a_configured_deployment_can_be_stored(admin: Admin) -> None:
    name = unique("settings")
    settings = {
        "rpm": 600,
        "tpm": 90_000,
        "credentials": [
            {"id": "team-a", "rpm": 300, "options": {"reply": "from team a"}},
            {"id": "team-b", "tpm": 40_000},
        ],
        "credential_strategy": "fill_first",
        "proxies": ["http://proxy-1.internal:3128", "http://proxy-2.internal:3128"],
        "price": {"input": 2.5, "output": "10"},
        "health_check": True,
        "optional": True,
    }
    created = admin.post("/deployments", json={"model_name": name, "provider": "mock", **settings})
    assert created.status_code == 201, created.text
    deployment = created.json()
    assert deployment["rpm"] == 600 and deployment["tpm"] == 90_000
    assert deployment["credentials"] == [
        {"id": "team-a", "has_api_key": False, "rpm": 300, "tpm": None, "options": {"reply": "from team a"}},
        {"id": "team-b", "has_api_key": False, "rpm": None, "tpm": 40_000, "options": {}},
    ]
    assert deployment["credential_strategy"] == "fill_first"
    assert deployment["proxies"] == settings["proxies"] and deployment["proxy_pool"] is None
    assert deployment["price"] == {"input": "2.5", "output": "10", "cached_input": None, "cache_write": None}
    assert deployment["health_check"] is True and deployment["optional"] is True
    assert admin.get(f"/deployments/{deployment['id']}").json() == deployment

    # They take effect: the price is the deployment's own, active checks run for it.
    effective = admin.get("/prices/effective", params={"model": name}).json()["data"]
    assert [(row["source"], row["price"]["input"]) for row in effective] == [("deployment", "2.5")]
    health = admin.get("/deployments/health").json()["data"]
    assert [row["active_checks"] for row in health if row["id"] == f"db:{deployment['id']}"] == [True]

    # An update keeps what it does not name; null clears a limit, the price or the health override.
    kept = admin.patch(f"/deployments/{deployment['id']}", json={"weight": 3})
    assert kept.status_code == 200, kept.text
    assert {key: kept.json()[key] for key in settings} == {key: deployment[key] for key in settings}
    cleared = admin.patch(
        f"/deployments/{deployment['id']}",
        json={"rpm": None, "price": None, "health_check": None, "proxies": [], "credentials": []},
    )
    assert cleared.status_code == 200, cleared.text
    after = cleared.json()
    assert (after["rpm"], after["price"], after["health_check"]) == (None, None, None)
    assert after["proxies"] == [] and after["credentials"] == [] and after["tpm"] == 90_000
    assert admin.delete(f"/deployments/{deployment['id']}").status_code == 204


def test_a_deployment_at_its_rpm_leaves_the_requests_to_the_others(admin: Admin) -> None:
    name = unique("limited")
    limited = admin.post(
        "/deployments",
        json={"model_name": name, "provider": "mock", "rpm": 2, "options": {"reply": "limited"}},
    )
    assert limited.status_code == 201, limited.text
    assert limited.json()["rpm"] == 2
    other = admin.post(
        "/deployments", json={"model_name": name, "provider": "mock", "options": {"reply": "other"}}
    )
    assert other.status_code == 201, other.text
    answers = [chat(admin, name) for _ in range(6)]
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    served_by = [answer.headers["x-lockgate-deployment"] for answer in answers]
    # Round robin would give each three; the limited one takes two within the minute.
    assert served_by.count(f"db:{limited.json()['id']}") == 2
    assert served_by.count(f"db:{other.json()['id']}") == 4
    for created in (limited, other):
        assert admin.delete(f"/deployments/{created.json()['id']}").status_code == 204


def test_credentials_take_turns_and_their_keys_are_write_only(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the ORM's SQL and parameters included
    keys = [f"sk-credential-{index}-{uuid.uuid4().hex}" for index in range(3)]
    with FakeOpenAI() as fake:
        fake.other_keys.update(keys)
        name = unique("pooled")
        created = admin.post(
            "/deployments",
            json={
                "model_name": name,
                "provider": "openai",
                "upstream_model": "gpt-4o-mini",
                "base_url": fake.base_url,
                "api_key": fake.api_key,
                "credentials": [{"id": "a", "api_key": keys[0]}, {"id": "b", "api_key": keys[1], "rpm": 100}],
            },
        )
        assert created.status_code == 201, created.text
        deployment = created.json()
        assert [c["has_api_key"] for c in deployment["credentials"]] == [True, True]
        for _ in range(4):
            assert chat(admin, name).status_code == 200
        assert fake.keys_used() == [keys[0], keys[1], keys[0], keys[1]]

        # Changing anything else keeps the pool and its keys.
        assert admin.patch(f"/deployments/{deployment['id']}", json={"weight": 2}).status_code == 200
        fake.reset()
        for _ in range(2):
            assert chat(admin, name).status_code == 200
        assert fake.keys_used() == [keys[0], keys[1]]

        # A credential sent without api_key keeps its stored key; null removes it (the deployment's
        # key is then used); a new key replaces the stored one.
        changed = admin.patch(
            f"/deployments/{deployment['id']}",
            json={"credentials": [{"id": "b", "rpm": 50}, {"id": "a", "api_key": None}]},
        )
        assert changed.status_code == 200, changed.text
        assert [(c["id"], c["has_api_key"], c["rpm"]) for c in changed.json()["credentials"]] == [
            ("b", True, 50),
            ("a", False, None),
        ]
        fake.reset()
        for _ in range(2):
            assert chat(admin, name).status_code == 200
        assert fake.keys_used() == [keys[1], fake.api_key]
        replaced = admin.patch(
            f"/deployments/{deployment['id']}", json={"credentials": [{"id": "b", "api_key": keys[2]}]}
        )
        assert replaced.status_code == 200, replaced.text
        fake.reset()
        assert chat(admin, name).status_code == 200
        assert fake.keys_used() == [keys[2]]

        reads = [admin.get(f"/deployments/{deployment['id']}").text, admin.get("/deployments").text]
        reads += [created.text, changed.text, replaced.text]
        for key in keys:
            assert all(key not in read for read in reads)
            assert key not in admin.backend.dump()
            assert key not in caplog.text
        assert admin.delete(f"/deployments/{deployment['id']}").status_code == 204


def test_bad_settings_are_400_or_422_naming_the_field(admin: Admin) -> None:
    cases: list[tuple[dict[str, Any], str, int]] = [
        ({"rpm": 0}, "rpm", 400),
        ({"rpm": 1.5}, "rpm", 400),
        ({"tpm": "many"}, "tpm", 400),
        ({"credentials": [{"rpm": 0}]}, "credentials[0].rpm", 400),
        ({"credentials": [{"id": "a"}, {"colour": "blue"}]}, "credentials[1].colour", 400),
        ({"credentials": [{"id": "a"}, {"id": "a"}]}, "credentials", 422),
        ({"credentials": [{"options": {"chunks": 0}}]}, "credentials[0].options", 422),
        ({"credential_strategy": "random"}, "credential_strategy", 400),
        ({"proxy": "http://a.internal:3128", "proxies": ["http://b.internal:3128"]}, "proxy", 422),
        ({"proxy_pool": "no-such-pool"}, "proxy_pool", 422),
        ({"price": {"input": -1, "output": 1}}, "price.input", 400),
        ({"price": {"input": "1e3", "output": 1}}, "price.input", 400),
        ({"price": {"input": 1}}, "price.output", 400),
        ({"health_check": "sometimes"}, "health_check", 400),
    ]
    name = unique("bad-settings")
    for settings, param, status in cases:
        response = admin.post("/deployments", json={"model_name": name, "provider": "mock", **settings})
        assert response.status_code == status, (settings, response.text)
        assert response.json()["error"]["param"] == param, (settings, response.text)
    assert admin.get("/deployments", params={"model_name": name}).json()["total"] == 0
    deployment = admin.post("/deployments", json={"model_name": name, "provider": "mock"}).json()
    for settings, param, status in [
        ({"credentials": None}, "credentials", 400),
        ({"credential_strategy": None}, "credential_strategy", 400),
        ({"credentials": [{"id": "a"}, {"id": "a"}]}, "credentials", 422),
    ]:
        response = admin.patch(f"/deployments/{deployment['id']}", json=settings)
        assert response.status_code == status, (settings, response.text)
        assert response.json()["error"]["param"] == param, (settings, response.text)
    assert admin.get(f"/deployments/{deployment['id']}").json()["credentials"] == []
    assert admin.delete(f"/deployments/{deployment['id']}").status_code == 204
