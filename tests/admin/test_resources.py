"""Users, organizations and API keys through the admin API, organization scoping included."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.admin.conftest import PASSWORD, Admin


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def chat(admin: Admin, key: str, model: str = "mock-echo") -> Any:
    return admin.client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hello there"}]},
    )


# --- users --------------------------------------------------------------------------------------------


def test_user_crud(admin: Admin) -> None:
    email = f"{unique('crud')}@Example.com"
    created = admin.post(
        "/users", json={"email": email, "password": PASSWORD, "name": "Crud", "role": "read"}
    )
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["email"] == email.lower()
    assert user["has_password"] is True
    assert admin.get(f"/users/{user['id']}").json() == user
    listed = admin.get("/users", params={"email": email}).json()
    assert [u["id"] for u in listed["data"]] == [user["id"]]
    assert listed["total"] == 1
    updated = admin.patch(f"/users/{user['id']}", json={"role": "write", "name": "Renamed"})
    assert updated.status_code == 200
    assert (updated.json()["role"], updated.json()["name"]) == ("write", "Renamed")
    assert admin.delete(f"/users/{user['id']}").status_code == 204
    assert admin.get(f"/users/{user['id']}").status_code == 404


def test_user_validation(admin: Admin) -> None:
    cases = [
        ({"email": "not-an-address", "password": PASSWORD}, "email", 400),
        ({"email": "a\u0007b@example.com", "password": PASSWORD}, "email", 400),
        ({"email": f"{unique('v')}@example.com", "password": "short"}, "password", 400),
        ({"email": f"{unique('v')}@example.com", "role": "owner"}, "role", 400),
        ({"email": f"{unique('v')}@example.com", "is_active": 0}, "is_active", 400),
        ({"email": f"{unique('v')}@example.com", "org_id": str(uuid.uuid4())}, "org_id", 422),
        ({"email": f"{unique('v')}@example.com", "name": "n" * 201}, "name", 400),
        ({"email": f"{unique('v')}@{'e' * 320}.com"}, "email", 400),
        ({"password": PASSWORD}, "email", 400),
    ]
    for body, param, status in cases:
        response = admin.post("/users", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["param"] == param
    # Integers beyond 64 bits are read as orjson reads them (floats), not a 500 from the JSON column.
    big = admin.post("/users", json={"email": f"{unique('v')}@example.com", "metadata": {"n": [-(2**70)]}})
    assert big.status_code == 201 and big.json()["metadata"] == {"n": [-float(2**70)]}, big.text
    duplicate = admin.post("/users", json={"email": "READ@example.com"})
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["param"] == "email"


def test_user_metadata_is_stored_returned_and_replaced(admin: Admin) -> None:
    limits = {"limits": {"rpm": 10}, "quotas": {"requests": {"day": 100}}, "team": "search"}
    email = f"{unique('meta')}@example.com"
    created = admin.post("/users", json={"email": email, "metadata": limits})
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["metadata"] == limits
    assert admin.get(f"/users/{user['id']}").json()["metadata"] == limits
    listed = admin.get("/users", params={"email": email}).json()["data"]
    assert [u["metadata"] for u in listed] == [limits]
    # Without metadata a user has an empty object, never null.
    plain = admin.post("/users", json={"email": f"{unique('plain')}@example.com"}).json()
    assert plain["metadata"] == {}

    replaced = admin.patch(f"/users/{user['id']}", json={"metadata": {"limits": {"tpm": 5000}}})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["metadata"] == {"limits": {"tpm": 5000}}  # replaced whole, not merged
    renamed = admin.patch(f"/users/{user['id']}", json={"name": "Kept"})
    assert renamed.json()["metadata"] == {"limits": {"tpm": 5000}}  # left out: kept
    assert admin.get(f"/users/{user['id']}").json()["metadata"] == {"limits": {"tpm": 5000}}
    emptied = admin.patch(f"/users/{user['id']}", json={"metadata": None})
    assert emptied.status_code == 200 and emptied.json()["metadata"] == {}


@pytest.mark.parametrize("metadata", [["rpm", 10], "rpm=10", 10, True])
def test_user_metadata_must_be_a_json_object(admin: Admin, metadata: Any) -> None:
    created = admin.post("/users", json={"email": f"{unique('bad')}@example.com", "metadata": metadata})
    assert created.status_code == 400, created.text
    error = created.json()["error"]
    assert (error["param"], error["code"]) == ("metadata", "invalid_value")
    user = admin.create_user(f"{unique('bad')}@example.com", "read")
    updated = admin.patch(f"/users/{user['id']}", json={"metadata": metadata})
    assert updated.status_code == 400, updated.text
    assert updated.json()["error"]["param"] == "metadata"
    assert admin.get(f"/users/{user['id']}").json()["metadata"] == {}


def test_listing_pages_and_filters(admin: Admin) -> None:
    role_of = {f"{unique('page')}@example.com": role for role in ("read", "read", "write")}
    for email, role in role_of.items():
        assert admin.post("/users", json={"email": email, "role": role}).status_code == 201
    first = admin.get("/users", params={"limit": 2, "offset": 0}).json()
    assert len(first["data"]) == 2 and first["has_more"] is True
    total = first["total"]
    last = admin.get("/users", params={"limit": 2, "offset": total - 1}).json()
    assert len(last["data"]) == 1 and last["has_more"] is False
    writers = admin.get("/users", params={"role": "write", "limit": 200}).json()["data"]
    assert writers and all(u["role"] == "write" for u in writers)
    assert admin.get("/users", params={"limit": 0}).status_code == 400
    assert admin.get("/users", params={"limit": 201}).json()["error"]["param"] == "limit"
    assert admin.get("/users", params={"role": "nobody"}).status_code == 400


def test_nobody_changes_their_own_role_organization_or_active_flag(admin: Admin) -> None:
    me = admin.users["admin"]
    for change in ({"role": "read"}, {"is_active": False}, {"org_id": admin.org["id"]}):
        response = admin.patch(f"/users/{me['id']}", "admin", json=change)
        assert response.status_code == 403, change
    assert admin.delete(f"/users/{me['id']}", "admin").status_code == 403
    assert admin.patch(f"/users/{me['id']}", "admin", json={"name": "Still Admin"}).status_code == 200


def test_password_changes_take_effect(admin: Admin) -> None:
    email = f"{unique('pw')}@example.com"
    user = admin.create_user(email, "read")
    response = admin.patch(f"/users/{user['id']}", json={"password": "a-brand-new-password"})
    assert response.status_code == 200
    assert admin.post("/auth/login", None, json={"email": email, "password": PASSWORD}).status_code == 401
    admin.login(email, "a-brand-new-password")
    assert admin.patch(f"/users/{user['id']}", json={"password": None}).json()["has_password"] is False


# --- organizations ---------------------------------------------------------------------------------------


def test_organization_tree_and_cycles(admin: Admin) -> None:
    top = admin.post("/organizations", json={"name": unique("top"), "metadata": {"tier": "gold"}}).json()
    mid = admin.post("/organizations", json={"name": unique("mid"), "parent_id": top["id"]}).json()
    leaf = admin.post("/organizations", json={"name": unique("leaf"), "parent_id": mid["id"]}).json()
    assert leaf["parent_id"] == mid["id"]
    for parent in (top["id"], mid["id"], leaf["id"]):
        if parent == top["id"]:
            response = admin.patch(f"/organizations/{top['id']}", json={"parent_id": leaf["id"]})
        else:
            response = admin.patch(f"/organizations/{top['id']}", json={"parent_id": parent})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == "parent_id"
    moved = admin.patch(f"/organizations/{leaf['id']}", json={"parent_id": top["id"]})
    assert moved.status_code == 200 and moved.json()["parent_id"] == top["id"]
    children = admin.get("/organizations", params={"parent_id": top["id"]}).json()["data"]
    assert {c["id"] for c in children} == {mid["id"], leaf["id"]}
    assert admin.delete(f"/organizations/{top['id']}").status_code == 409
    for org in (leaf, mid, top):
        assert admin.delete(f"/organizations/{org['id']}").status_code == 204
    duplicate = admin.post("/organizations", json={"name": "acme"})
    assert duplicate.status_code == 409


def test_org_bound_users_see_only_their_tree(admin: Admin) -> None:
    outsider = admin.post("/organizations", json={"name": unique("outside")}).json()
    outside_user = admin.create_user(f"{unique('out')}@example.com", "read", outsider["id"])
    orgs = admin.get("/organizations", "org-read", params={"limit": 200}).json()["data"]
    assert {o["id"] for o in orgs} == {admin.org["id"], admin.child_org["id"]}
    assert admin.get(f"/organizations/{outsider['id']}", "org-admin").status_code == 404
    users = admin.get("/users", "org-read", params={"limit": 200}).json()["data"]
    assert {u["org_id"] for u in users} <= {admin.org["id"], admin.child_org["id"]}
    assert admin.get(f"/users/{outside_user['id']}", "org-admin").status_code == 404
    assert admin.patch(f"/users/{outside_user['id']}", "org-admin", json={"name": "x"}).status_code == 404
    assert admin.delete(f"/users/{outside_user['id']}", "org-admin").status_code == 404


def test_org_bound_admins_manage_only_below_their_organization(admin: Admin) -> None:
    # Create below their organization: allowed; at the top or elsewhere: refused.
    sub = admin.post(
        "/organizations", "org-admin", json={"name": unique("sub"), "parent_id": admin.org["id"]}
    )
    assert sub.status_code == 201
    top = admin.post("/organizations", "org-admin", json={"name": unique("top")})
    assert top.status_code == 403 and top.json()["error"]["param"] == "parent_id"
    other = admin.post("/organizations", json={"name": unique("other")}).json()
    elsewhere = admin.post(
        "/organizations", "org-admin", json={"name": unique("x"), "parent_id": other["id"]}
    )
    assert elsewhere.status_code == 403
    move_out = admin.patch(f"/organizations/{sub.json()['id']}", "org-admin", json={"parent_id": other["id"]})
    assert move_out.status_code == 403
    # Their own organization is read-only to them.
    own = admin.patch(f"/organizations/{admin.org['id']}", "org-admin", json={"budget_limit": 1000})
    assert own.status_code == 403
    assert admin.delete(f"/organizations/{admin.org['id']}", "org-admin").status_code == 403
    # Users: only bound to their tree.
    unbound = admin.post("/users", "org-admin", json={"email": f"{unique('u')}@example.com"})
    assert unbound.status_code == 403 and unbound.json()["error"]["param"] == "org_id"
    bound = admin.post(
        "/users", "org-admin", json={"email": f"{unique('u')}@example.com", "org_id": admin.child_org["id"]}
    )
    assert bound.status_code == 201
    escape = admin.patch(f"/users/{bound.json()['id']}", "org-admin", json={"org_id": None})
    assert escape.status_code == 403
    assert admin.delete(f"/organizations/{sub.json()['id']}", "org-admin").status_code == 204


# --- keys ------------------------------------------------------------------------------------------------


def test_created_key_works_once_shown_and_never_listed(admin: Admin) -> None:
    created = admin.post("/keys", "write", json={"name": unique("key"), "models": ["mock-*"]})
    assert created.status_code == 201, created.text
    key = created.json()
    secret = key["secret"]
    assert secret.startswith(key["prefix"]) and len(secret) > 30
    answer = chat(admin, secret)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "hello there"
    assert chat(admin, secret, "mock-other").status_code == 200
    listing = admin.get("/keys", params={"limit": 200})
    got = admin.get(f"/keys/{key['id']}")
    for response in (listing, got):
        assert secret not in response.text
        assert secret[len(key["prefix"]) :] not in response.text
        assert "secret" not in response.text and "digest" not in response.text
    assert got.json()["prefix"] == key["prefix"]
    assert got.json()["status"] == "active"


def test_key_updates_reach_the_gateway_at_once(admin: Admin) -> None:
    key = admin.post("/keys", json={"name": unique("key")}).json()
    assert chat(admin, key["secret"], "mock-other").status_code == 200  # now cached by the gateway
    updated = admin.patch(f"/keys/{key['id']}", "write", json={"models": ["mock-echo"], "rpm_limit": 10})
    assert updated.status_code == 200
    assert updated.json()["models"] == ["mock-echo"] and updated.json()["rpm_limit"] == 10
    assert chat(admin, key["secret"], "mock-other").status_code == 403
    assert chat(admin, key["secret"], "mock-echo").status_code == 200


def test_revoked_and_deleted_keys_stop_at_once(admin: Admin) -> None:
    key = admin.post("/keys", "write", json={"name": unique("key")}).json()
    assert chat(admin, key["secret"]).status_code == 200
    revoked = admin.post(f"/keys/{key['id']}/revoke", "write")
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked" and revoked.json()["revoked_at"]
    response = chat(admin, key["secret"])
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]
    again = admin.post(f"/keys/{key['id']}/revoke", "write")
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    listed = admin.get("/keys", params={"status": "revoked", "limit": 200}).json()["data"]
    assert key["id"] in {k["id"] for k in listed}
    other = admin.post("/keys", "write", json={"name": unique("key")}).json()
    assert chat(admin, other["secret"]).status_code == 200
    assert admin.delete(f"/keys/{other['id']}", "write").status_code == 204
    assert chat(admin, other["secret"]).status_code == 401
    assert admin.get(f"/keys/{other['id']}").status_code == 404


def test_key_validation(admin: Admin) -> None:
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    cases = [
        ({"name": ""}, "name", 400),
        ({"name": "k" * 201}, "name", 400),
        # Characters Python's str.strip() removes but JSON Schema and pydantic keep (found by schemathesis).
        ({"name": "\u001f"}, "name", 400),
        ({"name": " \u001c\u001d\u001e "}, "name", 400),
        ({"name": "k", "expires_at": past}, "expires_at", 422),
        ({"name": "k", "expires_at": 1700000000}, "expires_at", 400),
        ({"name": "k", "rpm_limit": -1}, "rpm_limit", 400),
        ({"name": "k", "rpm_limit": 2**40}, "rpm_limit", 400),
        ({"name": "k", "rpm_limit": 2.5}, "rpm_limit", 400),
        ({"name": "k", "budget_limit": False}, "budget_limit", 400),
        ({"name": "k", "models": ["m" * 201]}, "models[0]", 400),
        ({"name": "k", "scopes": ["s" * 101]}, "scopes[0]", 400),
        ({"name": "k", "user_id": str(uuid.uuid4())}, "user_id", 422),
        ({"name": "k", "org_id": str(uuid.uuid4())}, "org_id", 422),
        ({"name": "k", "budget_limit": "1e400"}, "budget_limit", 400),
        ({"name": "k", "metadata": {"a": "nul\u0000"}}, "metadata.a", 400),
    ]
    for body, param, status in cases:
        response = admin.post("/keys", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["param"] == param, (body, response.text)


def test_expiring_keys(admin: Admin) -> None:
    soon = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    key = admin.post("/keys", json={"name": unique("exp"), "expires_at": soon}).json()
    assert key["expires_at"].startswith(soon[:16])
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    expired = admin.patch(f"/keys/{key['id']}", json={"expires_at": past})
    assert expired.json()["status"] == "expired"
    response = chat(admin, key["secret"])
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


def test_org_bound_users_manage_only_their_trees_keys(admin: Admin) -> None:
    own = admin.post("/keys", "org-write", json={"name": unique("own")})
    assert own.status_code == 201
    assert own.json()["org_id"] == admin.org["id"]  # their organization by default
    child = admin.post("/keys", "org-write", json={"name": unique("c"), "org_id": admin.child_org["id"]})
    assert child.status_code == 201
    outsider_org = admin.post("/organizations", json={"name": unique("keyless")}).json()
    outsider = admin.post("/keys", json={"name": unique("out"), "org_id": outsider_org["id"]}).json()
    unbound_user_key = admin.post(
        "/keys", json={"name": unique("u"), "user_id": admin.users["read"]["id"]}
    ).json()
    listed = {k["id"] for k in admin.get("/keys", "org-read", params={"limit": 200}).json()["data"]}
    assert {own.json()["id"], child.json()["id"]} <= listed
    assert outsider["id"] not in listed and unbound_user_key["id"] not in listed
    assert admin.get(f"/keys/{outsider['id']}", "org-read").status_code == 404
    assert admin.post(f"/keys/{outsider['id']}/revoke", "org-write").status_code == 404
    assert admin.delete(f"/keys/{outsider['id']}", "org-admin").status_code == 404
    refused = admin.post("/keys", "org-write", json={"name": "x", "org_id": outsider_org["id"]})
    assert refused.status_code == 403
    refused = admin.post("/keys", "org-write", json={"name": "x", "user_id": admin.users["read"]["id"]})
    assert refused.status_code == 403
    # A key of a user in their tree (without an organization of its own) is theirs to see.
    member_key = admin.post(
        "/keys", json={"name": unique("m"), "user_id": admin.users["org-read"]["id"]}
    ).json()
    assert admin.get(f"/keys/{member_key['id']}", "org-read").status_code == 200


@pytest.mark.parametrize("status", ["active", "revoked", "expired"])
def test_key_status_filter(admin: Admin, status: str) -> None:
    keys = admin.get("/keys", params={"status": status, "limit": 200}).json()["data"]
    assert all(k["status"] == status for k in keys)


def test_deleting_a_user_stops_their_keys(admin: Admin) -> None:
    user = admin.create_user(f"{unique('owner')}@example.com", "read")
    key = admin.post("/keys", json={"name": unique("k"), "user_id": user["id"]}).json()
    assert chat(admin, key["secret"]).status_code == 200
    assert admin.delete(f"/users/{user['id']}").status_code == 204
    assert chat(admin, key["secret"]).status_code == 401
