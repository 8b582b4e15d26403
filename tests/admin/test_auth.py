"""Logging in, refreshing, expiry, the login limit, and authentication and roles on every route."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import jwt
import pytest

from gateway_core.admin import OPERATIONS
from gateway_core.admin.api import Operation
from gateway_core.store.models import Role
from tests.admin.conftest import JWT_SECRET, PASSWORD, ROOT_EMAIL, ROOT_PASSWORD, Admin, forge

#: Operations anyone may call without a token.
PUBLIC = {("POST", "/auth/login"), ("POST", "/auth/refresh")}


def test_login_answers_a_token_pair_with_the_documented_claims(admin: Admin) -> None:
    pair = admin.login(ROOT_EMAIL, ROOT_PASSWORD)
    assert pair["token_type"] == "Bearer"
    assert pair["expires_in"] == 15 * 60
    claims = jwt.decode(pair["access_token"], JWT_SECRET, algorithms=["HS256"], issuer="lockgate-admin")
    assert claims["type"] == "access"
    assert claims["role"] == "admin"
    assert claims["org"] is None
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert {"sub", "jti"} <= set(claims)
    refresh = jwt.decode(pair["refresh_token"], JWT_SECRET, algorithms=["HS256"], issuer="lockgate-admin")
    assert refresh["type"] == "refresh"
    assert refresh["sub"] == claims["sub"]
    me = admin.client.get("/admin/api/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == ROOT_EMAIL
    assert "password_hash" not in me.text and "$argon2" not in me.text


def test_an_org_bound_user_token_names_its_organization(admin: Admin) -> None:
    claims = jwt.decode(admin.tokens["org-write"], JWT_SECRET, algorithms=["HS256"], issuer="lockgate-admin")
    assert claims["org"] == admin.org["id"]
    assert claims["role"] == "write"


@pytest.mark.parametrize(
    ("email", "password"),
    [(ROOT_EMAIL, "wrong-password"), ("nobody@example.com", ROOT_PASSWORD), ("not an address", "whatever")],
)
def test_failed_logins_are_401_with_one_generic_message(admin: Admin, email: str, password: str) -> None:
    response = admin.post("/auth/login", None, json={"email": email, "password": password})
    assert response.status_code == 401
    assert response.json()["error"] == {
        "message": "Incorrect e-mail address or password.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_credentials",
    }


def test_unknown_addresses_take_as_long_as_wrong_passwords(admin: Admin) -> None:
    def timed(email: str) -> float:
        started = time.perf_counter()
        admin.post("/auth/login", None, json={"email": email, "password": "wrong-password"})
        return time.perf_counter() - started

    known = min(timed(f"timing-{i}@example.com") for i in range(2))  # unknown addresses
    wrong = min(timed(email) for email in ("org-read@example.com", "org-admin@example.com"))
    # Both verify an argon2 hash (a dummy one for unknown addresses): same order of magnitude.
    assert known > wrong / 3


def test_a_disabled_user_cannot_log_in_and_its_tokens_stop_working(admin: Admin) -> None:
    email = f"leaver-{uuid.uuid4().hex[:8]}@example.com"
    user = admin.create_user(email, "read")
    token = admin.login(email, PASSWORD)["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert admin.client.get("/admin/api/auth/me", headers=headers).status_code == 200
    assert admin.patch(f"/users/{user['id']}", json={"is_active": False}).status_code == 200
    assert admin.client.get("/admin/api/auth/me", headers=headers).status_code == 401
    response = admin.post("/auth/login", None, json={"email": email, "password": PASSWORD})
    assert response.status_code == 401


def test_a_role_change_takes_effect_at_once(admin: Admin) -> None:
    email = f"demoted-{uuid.uuid4().hex[:8]}@example.com"
    user = admin.create_user(email, "write")
    headers = {"Authorization": f"Bearer {admin.login(email, PASSWORD)['access_token']}"}
    key = admin.client.post("/admin/api/keys", headers=headers, json={"name": "before"})
    assert key.status_code == 201
    assert admin.patch(f"/users/{user['id']}", json={"role": "read"}).status_code == 200
    refused = admin.client.post("/admin/api/keys", headers=headers, json={"name": "after"})
    assert refused.status_code == 403
    assert "`write`" in refused.json()["error"]["message"]


def test_refresh_rotates_and_a_used_refresh_token_ends_the_login(admin: Admin) -> None:
    first = admin.login("read@example.com", PASSWORD)
    second = admin.post("/auth/refresh", None, json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    pair = second.json()
    assert pair["access_token"] != first["access_token"]
    assert pair["refresh_token"] != first["refresh_token"]
    me = admin.client.get("/admin/api/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.json()["email"] == "read@example.com"
    # The first refresh token was used: presenting it again is refused ...
    again = admin.post("/auth/refresh", None, json={"refresh_token": first["refresh_token"]})
    assert again.status_code == 401
    assert "already used" in again.json()["error"]["message"]
    # ... and ends the login: the refresh token issued in its place stops working too.
    later = admin.post("/auth/refresh", None, json={"refresh_token": pair["refresh_token"]})
    assert later.status_code == 401
    # A new login is not affected.
    fresh = admin.login("read@example.com", PASSWORD)
    assert (
        admin.post("/auth/refresh", None, json={"refresh_token": fresh["refresh_token"]}).status_code == 200
    )


def test_refresh_refuses_expired_access_and_foreign_tokens(admin: Admin) -> None:
    sub = admin.users["read"]["id"]
    cases = {
        "expired": forge({"sub": sub, "type": "refresh", "fam": "f", "exp": int(time.time()) - 5}),
        "access": admin.tokens["read"],
        "foreign": forge({"sub": sub, "type": "refresh", "fam": "f"}, secret="x" * 40),
        "garbage": "not-a-token",
    }
    for name, token in cases.items():
        response = admin.post("/auth/refresh", None, json={"refresh_token": token})
        assert response.status_code == 401, name
    expired = admin.post("/auth/refresh", None, json={"refresh_token": cases["expired"]})
    assert "expired" in expired.json()["error"]["message"]


def test_expired_access_tokens_are_refused_with_a_hint_to_refresh(admin: Admin) -> None:
    token = forge({"sub": admin.users["admin"]["id"], "role": "admin", "exp": int(time.time()) - 1})
    response = admin.client.get("/admin/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "/admin/api/auth/refresh" in response.json()["error"]["message"]


def test_repeated_failed_logins_for_one_address_are_limited(admin: Admin) -> None:
    email = f"guessed-{uuid.uuid4().hex[:8]}@example.com"
    admin.create_user(email, "read")
    for _ in range(5):
        assert (
            admin.post("/auth/login", None, json={"email": email, "password": "bad-guess"}).status_code == 401
        )
    blocked = admin.post("/auth/login", None, json={"email": email, "password": PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    assert blocked.json()["error"]["code"] == "rate_limit_exceeded"
    # Other addresses are not affected.
    assert (
        admin.post("/auth/login", None, json={"email": "read@example.com", "password": PASSWORD}).status_code
        == 200
    )


def test_bodies_are_limited_and_must_be_json(admin: Admin) -> None:
    big = admin.post(
        "/auth/login",
        None,
        content=b'{"email": "' + b"a" * 70_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert big.status_code == 413
    text = admin.post("/auth/login", None, content=b"email=a", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415
    broken = admin.post("/auth/login", None, content=b"{", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400
    unknown = admin.post("/auth/login", None, json={"email": "a@b.c", "password": "x", "extra": 1})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "extra"


# --- every route: authentication and roles ---------------------------------------------------------------

_RANK = {Role.READ: 0, Role.WRITE: 1, Role.ADMIN: 2}


def _url(op: Operation) -> str:
    return "/admin/api" + op.path.replace("{id}", str(uuid.uuid4())).replace("{price_id}", "1")


def _auth_cases() -> list[tuple[Operation, str]]:
    cases = []
    for op in OPERATIONS:
        if op.role is None:
            continue
        cases += [
            (op, kind)
            for kind in ("no token", "bad token", "foreign secret", "expired", "refresh token", "not bearer")
        ]
    return cases


def _role_cases() -> list[tuple[Operation, str]]:
    cases = []
    for op in OPERATIONS:
        if op.role is None:
            continue
        for who, role in (
            ("read", Role.READ),
            ("write", Role.WRITE),
            ("org-read", Role.READ),
            ("org-write", Role.WRITE),
        ):
            if _RANK[role] < _RANK[op.role]:
                cases.append((op, who))
        if not op.scoped:
            cases.append((op, "org-admin"))
    return cases


def test_every_route_is_declared_and_only_login_and_refresh_are_public() -> None:
    assert {(op.method, op.path) for op in OPERATIONS if op.role is None} == PUBLIC
    assert len({(op.method, op.path) for op in OPERATIONS}) == len(OPERATIONS)


def test_the_mounted_routes_are_exactly_the_declared_operations(admin: Admin) -> None:
    from starlette.routing import Mount, Route

    mount = next(r for r in admin.server.app.routes if isinstance(r, Mount) and r.path == "/admin")
    mounted = {
        (method, re.sub(r":\w+\}", "}", route.path.removeprefix("/api")))  # ``{id:uuid}`` is ``{id}``
        for route in mount.routes
        if isinstance(route, Route) and route.path.startswith("/api/")
        for method in (route.methods or ()) - {"HEAD"}
    }
    assert mounted == {(op.method, op.path) for op in OPERATIONS}


@pytest.mark.parametrize(
    ("op", "kind"), _auth_cases(), ids=lambda v: f"{v.method} {v.path}" if isinstance(v, Operation) else v
)
def test_every_route_refuses_missing_and_bad_tokens(admin: Admin, op: Operation, kind: str) -> None:
    sub = admin.users["admin"]["id"]
    headers = {
        "no token": {},
        "bad token": {"Authorization": "Bearer not-a-jwt"},
        "foreign secret": {
            "Authorization": f"Bearer {forge({'sub': sub, 'role': 'admin'}, secret='y' * 40)}"
        },
        "expired": {
            "Authorization": f"Bearer {forge({'sub': sub, 'role': 'admin', 'exp': int(time.time()) - 10})}"
        },
        "refresh token": {
            "Authorization": f"Bearer {forge({'sub': sub, 'role': 'admin', 'type': 'refresh', 'fam': 'x'})}"
        },
        "not bearer": {"Authorization": f"Basic {admin.tokens['admin']}"},
    }[kind]
    response = admin.client.request(op.method, _url(op), headers=headers, json={} if op.body else None)
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] in ("missing_token", "invalid_token")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("op", "who"), _role_cases(), ids=lambda v: f"{v.method} {v.path}" if isinstance(v, Operation) else v
)
def test_every_route_refuses_insufficient_roles(admin: Admin, op: Operation, who: str) -> None:
    response = admin.client.request(
        op.method, _url(op), headers=admin.headers(who), json={} if op.body else None
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "permission_error"


@pytest.mark.parametrize(
    "op", [op for op in OPERATIONS if op.role is not None], ids=lambda op: f"{op.method} {op.path}"
)
def test_every_route_admits_an_unbound_admin(admin: Admin, op: Operation) -> None:
    response = admin.client.request(
        op.method, _url(op), headers=admin.headers("admin"), json={} if op.body else None
    )
    assert response.status_code not in (401, 403), response.text
    assert response.status_code < 500


def test_admin_errors_are_openai_shaped_and_carry_a_request_id(admin: Admin) -> None:
    for response in (
        admin.get("/users", None),
        admin.get(f"/users/{uuid.uuid4()}"),
        admin.get("/no-such-route"),
        admin.client.put("/admin/api/users"),
    ):
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert response.headers["x-request-id"]


def test_tokens_of_a_deleted_user_stop_working(admin: Admin) -> None:
    email = f"gone-{uuid.uuid4().hex[:8]}@example.com"
    user = admin.create_user(email, "admin")
    token = admin.login(email, PASSWORD)["access_token"]
    assert admin.delete(f"/users/{user['id']}").status_code == 204
    response = admin.client.get("/admin/api/users", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_the_admin_api_is_separate_from_the_gateway_keys(admin: Admin) -> None:
    # A gateway API key is not an admin token, and an admin token is not a gateway key.
    response = admin.client.get(
        "/admin/api/users", headers={"Authorization": f"Bearer {admin.server.api_key}"}
    )
    assert response.status_code == 401
    chat = admin.client.post(
        "/v1/chat/completions",
        headers=admin.headers("root"),
        json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 401
    assert isinstance(admin.client, httpx.Client)
