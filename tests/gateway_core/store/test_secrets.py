"""Provider API keys stored encrypted: round trip, wrong key, rotation, configuration."""

from __future__ import annotations

import pytest

from gateway_core import ConfigError, parse_config
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
