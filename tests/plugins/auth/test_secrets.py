"""API keys and passwords never appear in clear: not in any column of any table, not in any log line
(every logger at DEBUG, the ORM's and the server's included), not in the CLI's output beyond the one
time a new key is shown."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway_core.store import keys, users
from gateway_core.store.models import ApiKey
from tests.plugins.auth.gateways import HELLO, chat, gateway_config

LOCKGATE = [sys.executable, "-m", "gateway_core.cli"]


@pytest.fixture
def every_log_line(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture every record at DEBUG, also from loggers that do not propagate to the root."""
    caplog.set_level(logging.DEBUG)
    detached = [logging.getLogger(name) for name in ("lockgate", "hypercorn.error", "hypercorn.access")]
    detached = [logger for logger in detached if not logger.propagate]
    for logger in detached:
        logger.addHandler(caplog.handler)
    levels = {
        name: logging.getLogger(name).level for name in ("lockgate", "tortoise", "aiosqlite", "asyncpg")
    }
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield caplog
    for logger in detached:
        logger.removeHandler(caplog.handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def lockgate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOCKGATE, *args], capture_output=True, text=True, timeout=60, input=stdin, env=os.environ.copy()
    )


def test_keys_and_passwords_are_never_in_clear_in_the_database_or_the_logs(
    tmp_path: Path, store: Any, lockgate_server: Any, every_log_line: pytest.LogCaptureFixture
) -> None:
    config = gateway_config(store.url, last_used_flush_seconds=0.2)
    config["server"]["access_log"] = True
    config_file = tmp_path / "gw.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    admin_password = "admin password 7f3a9c"
    user_password = "user password 2b8e4d"

    # Users and keys, through the CLI and through the store functions the admin API calls.
    made_admin = lockgate(
        "users", "create-admin", "--email", "root@example.com", "--password-stdin",
        "--config", str(config_file), stdin=admin_password + "\n",
    )  # fmt: skip
    assert made_admin.returncode == 0, made_admin.stderr
    made_key = lockgate(
        "keys", "create", "--name", "cli", "--owner", "root@example.com", "--config", str(config_file)
    )
    assert made_key.returncode == 0, made_key.stderr
    cli_key = made_key.stdout.split()[1]

    async def more() -> tuple[str, str, str]:
        user = await users.create_user("dev@example.com", user_password)
        _, used = await keys.create_key("used", user=user)
        revoked_record, revoked = await keys.create_key("revoked", user=user)
        await keys.revoke_key(str(revoked_record.id))
        expired_record, expired = await keys.create_key(
            "expired", expires_at=datetime.now(UTC) + timedelta(days=1)
        )
        await ApiKey.filter(id=expired_record.id).update(expires_at=datetime.now(UTC) - timedelta(days=1))
        assert await users.authenticate_user("dev@example.com", user_password) is not None
        assert await users.authenticate_user("dev@example.com", admin_password) is None
        return used, revoked, expired

    used_key, revoked_key, expired_key = store(more)
    unknown_key = keys.generate_key()

    # Requests with every kind of key, in every header.
    server = lockgate_server(config)
    assert chat(server, cli_key)
    assert chat(server, used_key)
    for key in (revoked_key, expired_key, unknown_key):
        with pytest.raises(openai.AuthenticationError):
            chat(server, key)
        for header in ("X-API-Key", "x-api-key"):
            response = httpx.post(
                f"{server.base_url}/chat/completions",
                headers={header: key},
                json={"model": "mock-echo", "messages": HELLO},
                timeout=10,
            )
            assert response.status_code == 401
    server.stop()  # flushes last_used_at

    secrets = [cli_key, used_key, revoked_key, expired_key, unknown_key, admin_password, user_password]
    # What may appear: the visible prefix of a key; what must not: the rest of it.
    fragments = [*secrets, *(key[keys.VISIBLE_PREFIX_LENGTH :] for key in secrets[:5])]

    dump = "\n".join(repr(row) for table in store.tables() for row in store.rows(table))
    assert keys.key_digest(used_key) in dump  # the dump does hold the keys' records
    assert "$argon2" in dump  # and the users' password hashes
    logged = every_log_line.text
    assert keys.key_digest(used_key) in logged  # the ORM's queries were captured, with their parameters
    assert "POST /v1/chat/completions" in logged  # and the server's access log
    for fragment in fragments:
        assert fragment not in dump
        assert fragment not in logged
    for output in (made_admin.stdout, made_admin.stderr, made_key.stderr):
        for fragment in fragments:
            assert fragment not in output
