"""Provider API keys stored encrypted: round trip, wrong key, rotation, configuration."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway_core import ConfigError, parse_config
from gateway_core.store.database import Database
from gateway_core.store.deployments import deployment_config
from gateway_core.store.models import DeploymentRecord
from gateway_core.store.secrets import SecretBox, SecretError, generate_key, require_secret_box


def test_a_secret_round_trips_and_is_not_stored_in_clear() -> None:
    box = SecretBox(generate_key())
    token = box.encrypt("sk-upstream-secret-123")
    assert "sk-upstream-secret-123" not in token
    assert token != box.encrypt("sk-upstream-secret-123")  # a new random token each time
    assert box.decrypt(token) == "sk-upstream-secret-123"


def test_another_key_cannot_decrypt() -> None:
    token = SecretBox(generate_key()).encrypt("sk-upstream-secret-123")
    with pytest.raises(SecretError, match=r"cannot be decrypted with the configured secrets\.key"):
        SecretBox(generate_key()).decrypt(token)


def test_a_damaged_token_is_refused() -> None:
    box = SecretBox(generate_key())
    token = box.encrypt("sk-upstream-secret-123")
    with pytest.raises(SecretError):
        box.decrypt(token[:-4] + "AAAA")
    with pytest.raises(SecretError):
        box.decrypt("not a token at all ✗")


def test_previous_keys_decrypt_and_rotate() -> None:
    old, new = generate_key(), generate_key()
    token = SecretBox(old).encrypt("sk-old")
    rotated_box = SecretBox(new, previous_keys=[old])
    assert rotated_box.decrypt(token) == "sk-old"
    rotated = rotated_box.rotate(token)
    assert SecretBox(new).decrypt(rotated) == "sk-old"


def test_the_box_comes_from_the_secrets_section() -> None:
    key = generate_key()
    config = parse_config({"secrets": {"key": key}})
    box = SecretBox.from_config(config)
    assert box is not None
    assert SecretBox(key).decrypt(box.encrypt("x")) == "x"
    assert key not in repr(config) and key not in repr(box)
    assert SecretBox.from_config(parse_config({})) is None


def test_a_missing_key_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"secrets\.key is not configured"):
        require_secret_box(None)


def test_a_malformed_key_is_refused_by_the_configuration() -> None:
    with pytest.raises(ConfigError, match=r"secrets.key: .*not a Fernet key"):
        parse_config({"secrets": {"key": "too-short"}})
    with pytest.raises(ConfigError, match=r"secrets.previous_keys\[0\]: .*not a Fernet key"):
        parse_config({"secrets": {"key": generate_key(), "previous_keys": ["nope"]}})


def lockgate(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``lockgate`` command line, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gateway_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=os.environ.copy(),
    )


async def test_secrets_rotate_re_encrypts_every_stored_key(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    old, new = generate_key(), generate_key()
    old_box = SecretBox(old)
    record = await db.run(
        DeploymentRecord.create(
            model_name="pooled",
            provider="mock",
            api_key_encrypted=old_box.encrypt("sk-deployment"),
            settings={
                "credentials": [{"id": "a", "api_key_encrypted": old_box.encrypt("sk-a")}, {"id": "b"}],
                "rpm": 10,
            },
        )
    )
    lost = await db.run(
        DeploymentRecord.create(
            model_name="lost",
            provider="mock",
            enabled=False,
            settings={"credentials": [{"api_key_encrypted": SecretBox(generate_key()).encrypt("sk-lost")}]},
        )
    )
    config = tmp_path / "gw.yaml"
    config.write_text(
        yaml.safe_dump({"database": {"url": database_url}, "secrets": {"key": new, "previous_keys": [old]}})
    )

    result = await asyncio.to_thread(lockgate, "secrets", "rotate", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert result.stdout == "re-encrypted 2 secret(s) with secrets.key\n"
    assert f"{lost.id}: credentials[0].api_key" in result.stderr
    assert "sk-" not in result.stdout + result.stderr
    # The new key alone decrypts them now; the rest of the record is as it was.
    rotated = deployment_config(await db.run(DeploymentRecord.get(id=record.id)), SecretBox(new))
    assert rotated.api_key is not None and rotated.api_key.get_secret_value() == "sk-deployment"
    assert [c.api_key.get_secret_value() if c.api_key else None for c in rotated.credentials] == [
        "sk-a",
        None,
    ]
    assert [c.id for c in rotated.credentials] == ["a", "b"] and rotated.rpm == 10

    await db.run(lost.delete())
    again = await asyncio.to_thread(lockgate, "secrets", "rotate", "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert again.stdout == "re-encrypted 2 secret(s) with secrets.key\n"


def test_secrets_rotate_needs_secrets_key(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": f"sqlite://{tmp_path / 'lockgate.db'}"}}))
    assert lockgate("db", "upgrade", "--config", str(config)).returncode == 0
    result = lockgate("secrets", "rotate", "--config", str(config))
    assert result.returncode == 2
    assert "secrets.key is not configured" in result.stderr


def test_secrets_rotate_needs_a_database(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump({"secrets": {"key": generate_key()}}))
    result = lockgate("secrets", "rotate", "--config", str(config))
    assert result.returncode == 2
    assert "no database section: stored deployments and their keys live in the database" in result.stderr
