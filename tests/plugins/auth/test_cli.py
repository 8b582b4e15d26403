"""``lockgate users create-admin`` and ``lockgate keys create|list|revoke`` as an operator runs them
(subprocesses), against SQLite and PostgreSQL, with gateways serving from the same database."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway_core.store import keys, users
from gateway_core.store.models import ApiKey, Organization, User
from tests.plugins.auth.gateways import HELLO, chat, gateway_config, refused, wait_until, wait_until_listening

LOCKGATE = [sys.executable, "-m", "gateway_core.cli"]


def lockgate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOCKGATE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        env=os.environ.copy(),
    )


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def config_file(tmp_path: Path, database_url: str) -> Path:
    return write_config(tmp_path / "gw.yaml", gateway_config(database_url))


def created_key(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The ``key``, ``id`` and ``prefix`` lines ``lockgate keys create`` prints."""
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":", 1) for line in result.stdout.strip().splitlines())
    return {name.strip(): value.strip() for name, value in fields.items()}


# --- users create-admin ------------------------------------------------------------------------------------


def test_create_admin_reads_the_password_from_stdin_and_stores_only_its_hash(
    config_file: Path, store: Any
) -> None:
    store(lambda: Organization.create(name="acme"))
    password = "correct horse battery staple"

    result = lockgate(
        "users", "create-admin", "--email", "Admin@Example.com", "--password-stdin", "--org", "acme",
        "--config", str(config_file), stdin=password + "\n",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("created admin admin@example.com (id ")
    assert password not in result.stdout + result.stderr
    user = store(lambda: User.get(email="admin@example.com").prefetch_related("org"))
    assert user.role == "admin"
    assert user.org.name == "acme"
    assert user.password_hash.startswith("$argon2")
    assert users.verify_password(password, user.password_hash)
    assert not users.verify_password("wrong password", user.password_hash)


def test_create_admin_refuses_what_it_cannot_do(config_file: Path, store: Any) -> None:
    store(lambda: users.create_user("taken@example.com", "a long password", "admin"))
    config = ("--config", str(config_file))

    no_terminal = lockgate("users", "create-admin", "--email", "new@example.com", *config)
    assert no_terminal.returncode == 1
    assert "--password-stdin" in no_terminal.stderr

    short = lockgate(
        "users", "create-admin", "--email", "new@example.com", "--password-stdin", *config, stdin="short\n"
    )
    assert short.returncode == 1
    assert "at least 8 characters" in short.stderr
    assert "short" not in short.stderr.replace("at least", "")

    bad_email = lockgate(
        "users",
        "create-admin",
        "--email",
        "not-an-address",
        "--password-stdin",
        *config,
        stdin="long enough\n",
    )
    assert bad_email.returncode == 1
    assert "not an e-mail address" in bad_email.stderr

    taken = lockgate(
        "users",
        "create-admin",
        "--email",
        "Taken@example.com",
        "--password-stdin",
        *config,
        stdin="long enough\n",
    )
    assert taken.returncode == 1
    assert "exists" in taken.stderr

    no_org = lockgate(
        "users",
        "create-admin",
        "--email",
        "x@example.com",
        "--password-stdin",
        "--org",
        "nope",
        *config,
        stdin="long enough\n",
    )
    assert no_org.returncode == 1
    assert "no organization" in no_org.stderr


# --- keys create / list / revoke ----------------------------------------------------------------------------


def test_keys_create_prints_the_key_once_and_the_gateway_accepts_it(
    config_file: Path, store: Any, lockgate_server: Any
) -> None:
    async def owner_and_org() -> None:
        org = await Organization.create(name="acme")
        await users.create_user("dev@acme.example", org=org)

    store(owner_and_org)

    result = lockgate(
        "keys", "create", "--name", "ci", "--owner", "dev@acme.example", "--org", "acme",
        "--models", "mock-*, gpt-4o-mini", "--expires", "30d", "--config", str(config_file),
    )  # fmt: skip

    printed = created_key(result)
    secret = printed["key"]
    assert secret.startswith("lg-")
    assert printed["prefix"] == secret[: keys.VISIBLE_PREFIX_LENGTH]
    assert "shown once" in result.stderr
    record = store(lambda: ApiKey.get(id=printed["id"]).prefetch_related("user", "org"))
    assert record.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert record.prefix == printed["prefix"]
    assert record.allowed_models == ["mock-*", "gpt-4o-mini"]
    assert (record.user.email, record.org.name) == ("dev@acme.example", "acme")
    expected = datetime.now(UTC) + timedelta(days=30)
    assert abs((record.expires_at - expected).total_seconds()) < 120

    server = lockgate_server(yaml.safe_load(config_file.read_text()))
    assert chat(server, secret)
    assert refused(server, secret, "gpt-4o")[0] == 403


def test_keys_create_takes_a_date_as_expiry_and_refuses_bad_input(config_file: Path, store: Any) -> None:
    config = ("--config", str(config_file))

    printed = created_key(lockgate("keys", "create", "--name", "dated", "--expires", "2099-12-31", *config))

    record = store(lambda: ApiKey.get(id=printed["id"]))
    assert record.expires_at == datetime(2099, 12, 31, tzinfo=UTC)
    assert record.user_id is None and record.org_id is None and record.allowed_models is None
    for args, message in [
        (("--expires", "soon"), "neither a duration"),
        (("--expires", "2001-01-01"), "in the past"),
        (("--owner", "nobody@example.com"), "no user"),
        (("--org", "no-such-org"), "no organization"),
    ]:
        result = lockgate("keys", "create", "--name", "x", *args, *config)
        assert result.returncode == 1, args
        assert message in result.stderr
    assert store(lambda: ApiKey.all().count()) == 1


def test_keys_list_shows_everything_but_the_secret(config_file: Path, store: Any) -> None:
    async def three_keys() -> list[str]:
        user = await users.create_user("owner@example.com")
        _, active = await keys.create_key("active", user=user)
        revoked, revoked_secret = await keys.create_key("old")
        await keys.revoke_key(str(revoked.id))
        _, expiring = await keys.create_key("dated", expires_at=datetime(2099, 1, 1, tzinfo=UTC))
        return [active, revoked_secret, expiring]

    secrets = store(three_keys)
    records = store(lambda: ApiKey.all().order_by("created_at"))

    table = lockgate("keys", "list", "--config", str(config_file))
    listed = lockgate("keys", "list", "--json", "--config", str(config_file))

    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.strip().splitlines()
    assert header.split() == [
        "id",
        "name",
        "prefix",
        "owner",
        "org",
        "created",
        "last",
        "used",
        "expires",
        "status",
    ]
    assert [row.split()[1] for row in rows] == ["active", "old", "dated"]
    assert "owner@example.com" in rows[0] and rows[0].endswith("active")
    assert rows[1].endswith("revoked")
    assert "2099-01-01 00:00" in rows[2]
    assert listed.returncode == 0, listed.stderr
    summaries = json.loads(listed.stdout)
    assert [k["prefix"] for k in summaries] == [r.prefix for r in records]
    assert [k["status"] for k in summaries] == ["active", "revoked", "active"]
    assert summaries[0]["owner"] == "owner@example.com"
    assert {
        "id",
        "name",
        "prefix",
        "owner",
        "org",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    } <= set(summaries[0])
    for output in (table.stdout, listed.stdout):
        for secret, record in zip(secrets, records, strict=True):
            assert secret not in output
            assert secret[keys.VISIBLE_PREFIX_LENGTH :] not in output
            assert record.digest not in output


def test_keys_revoke_reaches_running_gateways_through_redis(
    tmp_path: Path, store: Any, redis_url: str, lockgate_server: Any
) -> None:
    config = gateway_config(store.url, redis_url=redis_url, cache_ttl_seconds=300)
    config_file = write_config(tmp_path / "gw.yaml", config)
    record, secret = store(lambda: keys.create_key("shared"))
    first, second = lockgate_server(config), lockgate_server(config)
    assert chat(first, secret) and chat(second, secret)  # cached by both
    wait_until_listening(first, second)
    wait_until_listening(second, first)

    result = lockgate("keys", "revoke", record.prefix, "--config", str(config_file))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"revoked {record.prefix} (shared, id {record.id})"
    assert result.stderr == ""
    for server in (first, second):
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {secret}"}) as http:

            def refuses(http: httpx.Client = http) -> bool:
                response = http.post("/chat/completions", json={"model": "mock-echo", "messages": HELLO})
                return response.status_code == 401

            assert wait_until(refuses, seconds=1.0) < 1.0
    assert refused(second, secret) == (401, "This API key has been revoked.")


def test_keys_revoke_without_redis_says_gateways_learn_it_within_the_cache_ttl(
    config_file: Path, store: Any
) -> None:
    record, _ = store(lambda: keys.create_key("lonely"))

    result = lockgate("keys", "revoke", str(record.id), "--config", str(config_file))
    again = lockgate("keys", "revoke", record.prefix, "--config", str(config_file))

    assert result.returncode == 0, result.stderr
    assert "no Redis is configured" in result.stderr
    assert "within 60 s" in result.stderr
    revoked_at = store(lambda: ApiKey.get(id=record.id)).revoked_at
    assert revoked_at is not None
    assert again.returncode == 0  # idempotent: the first revocation time stays
    assert store(lambda: ApiKey.get(id=record.id)).revoked_at == revoked_at
    unknown = lockgate("keys", "revoke", "lg-nothing1", "--config", str(config_file))
    assert unknown.returncode == 1
    assert "no API key" in unknown.stderr


def test_commands_need_a_database_section(tmp_path: Path) -> None:
    config_file = write_config(
        tmp_path / "gw.yaml", {"models": {"m": {"deployments": [{"provider": "mock"}]}}}
    )

    result = lockgate("keys", "list", "--config", str(config_file))

    assert result.returncode == 2
    assert "no database section" in result.stderr


def test_key_generate_and_hash_still_work_without_a_database() -> None:
    generated = lockgate("keys", "generate")
    key = generated.stdout.split()[1]
    hashed = lockgate("keys", "hash", key)

    assert generated.returncode == 0 and key.startswith("lg-")
    assert hashed.stdout.strip() == hashlib.sha256(key.encode()).hexdigest()
