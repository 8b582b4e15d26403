"""Passwords, API keys and upstream keys never appear in clear in the database or the logs."""

from __future__ import annotations

import logging
import uuid

import pytest

from tests.admin.conftest import PASSWORD, Admin


def test_secrets_are_not_stored_or_logged_in_clear(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the ORM's SQL and parameters included
    password = f"pw-{uuid.uuid4().hex}"
    upstream_key = f"sk-upstream-{uuid.uuid4().hex}"
    email = f"secret-{uuid.uuid4().hex[:8]}@example.com"
    user = admin.post("/users", json={"email": email, "password": password, "role": "write"}).json()
    pair = admin.login(email, password)
    changed_password = f"pw2-{uuid.uuid4().hex}"
    assert admin.patch(f"/users/{user['id']}", json={"password": changed_password}).status_code == 200
    # A password typed into the e-mail field of a failed login must not reach the log either.
    typo = f"typed-into-email-{uuid.uuid4().hex}"
    assert admin.post("/auth/login", None, json={"email": typo, "password": password}).status_code == 401
    key = admin.post("/keys", json={"name": "logged?", "user_id": user["id"]}).json()
    secret = key["secret"]
    chat = admin.client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 200
    assert admin.post(f"/keys/{key['id']}/revoke").status_code == 200
    deployment = admin.post(
        "/deployments",
        json={"model_name": f"m-{uuid.uuid4().hex[:6]}", "provider": "openai", "api_key": upstream_key},
    )
    assert deployment.status_code == 201, deployment.text
    refreshed = admin.post("/auth/refresh", None, json={"refresh_token": pair["refresh_token"]}).json()

    secrets = {
        "password": password,
        "changed password": changed_password,
        "typed into the e-mail field": typo,
        "API key": secret,
        "API key without its prefix": secret[len(key["prefix"]) :],
        "upstream key": upstream_key,
        "access token": pair["access_token"],
        "refresh token": refreshed["refresh_token"],
    }
    logs = caplog.text
    assert "lockgate" in logs and "SELECT" in logs.upper()  # the log was really captured
    database = admin.backend.dump()
    assert "$argon2id$" in database  # hashes are there ...
    for what, value in secrets.items():
        assert value not in logs, f"the {what} is in the log"
        assert value not in database, f"the {what} is in the database"
    assert PASSWORD not in database
