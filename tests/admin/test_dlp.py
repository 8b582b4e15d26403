"""The ``dlp`` field of keys and organizations: set, shown, replaced and removed through the admin API,
checked against the configuration, and seen by the very next request of the key."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from gateway_core.testing import GatewayServer
from tests.admin.conftest import PASSWORD, ROOT_EMAIL, ROOT_PASSWORD, Admin, Backend, admin_config
from tests.plugins.auth.gateways import DLP_SECTION, DlpSpy


@pytest.fixture(scope="module")
def spy() -> DlpSpy:
    return DlpSpy()


@contextmanager
def started(backend: Backend, config: dict[str, Any], spy: DlpSpy) -> Iterator[Admin]:
    with (
        GatewayServer(config, extra_plugins=[("spy", spy)]) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        state = Admin(server, backend, client)
        state.tokens["root"] = state.login(ROOT_EMAIL, ROOT_PASSWORD)["access_token"]
        yield state


@pytest.fixture(scope="module")
def admin(backend: Backend, spy: DlpSpy) -> Iterator[Admin]:
    """A gateway with the test DLP filters ``emails`` and ``phones``, and ``secrets.key`` to hash with."""
    with started(backend, admin_config(backend.url, dlp=DLP_SECTION), spy) as state:
        yield state


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def shown(**fields: Any) -> dict[str, Any]:
    """An override as answers show it: every field, null (or empty) when it is not set."""
    return {"enabled": None, "direction": None, "entities": {}, "on_error": None, "filters": None, **fields}


def chat(admin: Admin, secret: str, content: str = "hi") -> None:
    response = admin.client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "mock", "messages": [{"role": "user", "content": content}]},
    )
    assert response.status_code == 200, response.text


def last_principal(admin: Admin, spy: DlpSpy, secret: str) -> Any:
    chat(admin, secret)
    return spy.principals[-1]


# --- keys and organizations --------------------------------------------------------------------------------


def test_a_key_s_override_is_set_shown_kept_replaced_and_removed(admin: Admin) -> None:
    dlp = {"entities": {"EMAIL_ADDRESS": "mask", "*": "redact"}, "direction": "both", "filters": ["emails"]}
    created = admin.post("/keys", json={"name": unique("key"), "metadata": {"team": "search"}, "dlp": dlp})
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["dlp"] == shown(**dlp)
    assert key["metadata"] == {"team": "search"}  # the override is shown as `dlp` only
    path = f"/keys/{key['id']}"
    assert admin.get(path).json()["dlp"] == shown(**dlp)
    listed = {k["id"]: k for k in admin.get("/keys", params={"limit": 200}).json()["data"]}
    assert listed[key["id"]]["dlp"] == shown(**dlp)

    # A new metadata keeps the override; a new override keeps the metadata.
    renamed = admin.patch(path, json={"metadata": {"team": "web"}}).json()
    assert (renamed["metadata"], renamed["dlp"]) == ({"team": "web"}, shown(**dlp))
    replaced = admin.patch(path, json={"dlp": {"enabled": False}}).json()
    assert (replaced["metadata"], replaced["dlp"]) == ({"team": "web"}, shown(enabled=False))
    emptied = admin.patch(path, json={"metadata": None}).json()
    assert (emptied["metadata"], emptied["dlp"]) == ({}, shown(enabled=False))
    removed = admin.patch(path, json={"dlp": None}).json()
    assert (removed["metadata"], removed["dlp"]) == ({}, None)
    assert admin.get(path).json()["dlp"] is None


def test_only_admins_set_a_key_s_override(admin: Admin) -> None:
    for role in ("write", "admin"):
        email = f"{unique(role)}@example.com"
        admin.create_user(email, role)
        admin.tokens[role] = admin.login(email, PASSWORD)["access_token"]
    refused = admin.post("/keys", "write", json={"name": unique("key"), "dlp": {"enabled": False}})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["param"] == "dlp"
    key = admin.post("/keys", "write", json={"name": unique("key")}).json()
    assert admin.patch(f"/keys/{key['id']}", "write", json={"dlp": None}).status_code == 403
    assert admin.patch(f"/keys/{key['id']}", "write", json={"name": unique("key")}).status_code == 200
    assert admin.patch(f"/keys/{key['id']}", "admin", json={"dlp": {"enabled": False}}).status_code == 200


def test_an_organization_s_override_is_set_shown_kept_replaced_and_removed(admin: Admin) -> None:
    dlp = {"entities": {"PHONE_NUMBER": "block"}, "on_error": "allow"}
    created = admin.post(
        "/organizations", json={"name": unique("org"), "metadata": {"limits": {"rpm": 5}}, "dlp": dlp}
    )
    assert created.status_code == 201, created.text
    org = created.json()
    assert (org["metadata"], org["dlp"]) == ({"limits": {"rpm": 5}}, shown(**dlp))
    path = f"/organizations/{org['id']}"
    assert admin.get(path).json()["dlp"] == shown(**dlp)
    listed = {o["id"]: o for o in admin.get("/organizations", params={"limit": 200}).json()["data"]}
    assert listed[org["id"]]["dlp"] == shown(**dlp)

    renamed = admin.patch(path, json={"metadata": {"quotas": {"requests": {"day": 10}}}}).json()
    assert (renamed["metadata"], renamed["dlp"]) == ({"quotas": {"requests": {"day": 10}}}, shown(**dlp))
    replaced = admin.patch(path, json={"dlp": {"filters": []}}).json()
    assert replaced["dlp"] == shown(filters=[])  # no filter at all: not the same as all of them
    removed = admin.patch(path, json={"dlp": None}).json()
    assert (removed["metadata"], removed["dlp"]) == ({"quotas": {"requests": {"day": 10}}}, None)
    plain = admin.post("/organizations", json={"name": unique("org")}).json()
    assert (plain["metadata"], plain["dlp"]) == ({}, None)


@pytest.mark.parametrize("resource", ["keys", "organizations"])
def test_invalid_overrides_are_refused_naming_the_field(admin: Admin, resource: str) -> None:
    cases = [
        ({"entities": {"EMAIL_ADDRESS": "scramble"}}, "dlp.entities.EMAIL_ADDRESS", 400),
        ({"entities": {"email_address": "mask"}}, "dlp.entities.email_address.[key]", 400),
        ({"entities": ["EMAIL_ADDRESS"]}, "dlp.entities", 400),
        ({"direction": "sideways"}, "dlp.direction", 400),
        ({"enabled": "no"}, "dlp.enabled", 400),
        ({"filters": "emails"}, "dlp.filters", 400),
        ({"actions": {}}, "dlp.actions", 400),
        ("redact", "dlp", 400),
        ({"filters": ["emails", "presidio"]}, "dlp.filters", 422),
    ]
    existing = admin.post(f"/{resource}", json={"name": unique("dlp")}).json()
    for dlp, param, status in cases:
        for response in (
            admin.post(f"/{resource}", json={"name": unique("dlp"), "dlp": dlp}),
            admin.patch(f"/{resource}/{existing['id']}", json={"dlp": dlp}),
        ):
            assert response.status_code == status, (dlp, response.text)
            assert response.json()["error"]["param"] == param, (dlp, response.text)
    unknown = admin.post(f"/{resource}", json={"name": unique("dlp"), "dlp": {"filters": ["presidio"]}})
    assert unknown.json()["error"]["message"] == (
        "dlp.filters: `presidio` is not a configured filter; the configured filters: `emails`, `phones`."
    )
    # The override is its own field: `metadata` cannot hold one.
    for response in (
        admin.post(f"/{resource}", json={"name": unique("dlp"), "metadata": {"dlp": {"enabled": False}}}),
        admin.patch(f"/{resource}/{existing['id']}", json={"metadata": {"dlp": {}}}),
    ):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == "metadata.dlp"
    assert admin.get(f"/{resource}/{existing['id']}").json()["dlp"] is None  # nothing was stored


def test_the_hash_action_needs_a_key_to_hash_with(admin: Admin, spy: DlpSpy) -> None:
    hashing = {"entities": {"EMAIL_ADDRESS": "hash"}}
    # With `secrets.key` (the fixture's gateway):
    assert admin.post("/keys", json={"name": unique("hash"), "dlp": hashing}).status_code == 201
    without_secrets = admin_config(admin.backend.url, dlp=DLP_SECTION)
    del without_secrets["secrets"]
    with started(admin.backend, without_secrets, spy) as other:
        for resource in ("keys", "organizations"):
            refused = other.post(
                f"/{resource}", json={"name": unique("hash"), "dlp": {"entities": {"*": "hash"}}}
            )
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert error["param"] == "dlp.entities.*"
            assert error["message"] == (
                "dlp.entities.*: the `hash` action needs a key: set `dlp.hash_key` or `secrets.key` in the "
                "gateway's configuration, or choose another action."
            )
        assert (
            other.post("/keys", json={"name": unique("mask"), "dlp": {"entities": {"*": "mask"}}}).status_code
            == 201
        )
    with_hash_key = {
        **without_secrets,
        "dlp": {**DLP_SECTION, "hash_key": "a-key-for-the-hash-action-0123456789"},
    }
    with started(admin.backend, with_hash_key, spy) as other:
        assert other.post("/organizations", json={"name": unique("hash"), "dlp": hashing}).status_code == 201


# --- what the gateway sees ----------------------------------------------------------------------------------


def test_changed_overrides_reach_the_next_request_at_once(admin: Admin, spy: DlpSpy) -> None:
    top = admin.post("/organizations", json={"name": unique("top"), "dlp": {"entities": {"*": "log"}}}).json()
    team = admin.post(
        "/organizations", json={"name": unique("team"), "parent_id": top["id"], "dlp": {"direction": "both"}}
    ).json()
    key = admin.post(
        "/keys",
        json={"name": unique("key"), "org_id": team["id"], "dlp": {"entities": {"EMAIL_ADDRESS": "mask"}}},
    ).json()
    principal = last_principal(admin, spy, key["secret"])  # now cached by the gateway
    assert principal.metadata["dlp"] == {"entities": {"EMAIL_ADDRESS": "mask"}}
    assert principal.metadata["org_dlp"] == {"direction": "both"}
    assert [a["dlp"] for a in principal.metadata["org_ancestors"]] == [{"entities": {"*": "log"}}]

    admin.patch(f"/keys/{key['id']}", json={"dlp": {"entities": {"EMAIL_ADDRESS": "block"}}})
    assert last_principal(admin, spy, key["secret"]).metadata["dlp"] == {
        "entities": {"EMAIL_ADDRESS": "block"}
    }
    admin.patch(f"/organizations/{team['id']}", json={"dlp": {"enabled": False}})
    assert last_principal(admin, spy, key["secret"]).metadata["org_dlp"] == {"enabled": False}
    admin.patch(f"/organizations/{top['id']}", json={"dlp": None})
    assert last_principal(admin, spy, key["secret"]).metadata["org_ancestors"][0]["dlp"] is None
    admin.patch(f"/keys/{key['id']}", json={"dlp": None})
    principal = last_principal(admin, spy, key["secret"])
    assert "dlp" not in principal.metadata
    assert principal.metadata["org_dlp"] == {"enabled": False}


def test_a_key_s_override_applies_and_the_findings_reach_its_usage_records(admin: Admin) -> None:
    masking = admin.post(
        "/keys", json={"name": unique("mask"), "dlp": {"entities": {"EMAIL_ADDRESS": "mask"}}}
    )
    plain = admin.post("/keys", json={"name": unique("plain")})
    keys = {"mask": masking.json(), "redact": plain.json()}
    for key in keys.values():
        chat(admin, key["secret"], "write to bob@example.com or to alice@example.org")
        chat(admin, key["secret"], "nothing to hide")

    for action, key in keys.items():
        records: list[dict[str, Any]] = []
        for _ in range(100):  # written within usage.flush_seconds; 10 s at most
            records = admin.get("/usage", params={"key_id": key["id"]}).json()["data"]
            if len(records) == 2:
                break
            time.sleep(0.1)
        assert sorted((r["dlp_findings"] for r in records), key=len) == [
            [],
            [{"type": "EMAIL_ADDRESS", "direction": "request", "action": action, "count": 2}],
        ]
        found = admin.get("/usage", params={"key_id": key["id"], "dlp": "true"}).json()["data"]
        assert [r["dlp_findings"][0]["action"] for r in found] == [action]
