"""Encrypting secrets stored in the database (provider API keys of run-time deployments and of
their credentials).

The key is the configuration's ``secrets.key`` (a Fernet key: AES-128-CBC with an HMAC-SHA256, from
``cryptography``). Tokens made with a key listed in ``secrets.previous_keys`` still decrypt, so a key
can be rotated: add the new key, move the old one to ``previous_keys``, run ``lockgate secrets
rotate`` (:func:`gateway_core.store.deployments.rotate_secrets`).
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from gateway_core.config import GatewayConfig, SecretsConfig
from gateway_core.errors import ConfigError

NO_KEY_MESSAGE = (
    "secrets.key is not configured: provider API keys stored in the database cannot be "
    "encrypted or decrypted (see docs/configuration.md, 'secrets')"
)


class SecretError(Exception):
    """A stored secret cannot be decrypted: made with another key, or damaged."""


def generate_key() -> str:
    """A new random key for ``secrets.key``."""
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts and decrypts short strings with the gateway's secret key."""

    def __init__(self, key: str | bytes, previous_keys: Iterable[str | bytes] = ()) -> None:
        self._fernet = MultiFernet([Fernet(key), *(Fernet(old) for old in previous_keys)])

    @classmethod
    def from_config(cls, config: GatewayConfig | SecretsConfig | None) -> SecretBox | None:
        """The box for a configuration's ``secrets`` section; None when it has none."""
        section = config.secrets if isinstance(config, GatewayConfig) else config
        if section is None:
            return None
        return cls(section.key.get_secret_value(), [old.get_secret_value() for old in section.previous_keys])

    def encrypt(self, plaintext: str) -> str:
        """An opaque ASCII token for ``plaintext`` (a new random one each call)."""
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The plaintext of a token; :class:`SecretError` for a token of another key, or damaged."""
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError):
            raise SecretError("the secret cannot be decrypted with the configured secrets.key") from None

    def rotate(self, token: str) -> str:
        """The token re-encrypted with the current key (it may have been made with a previous key)."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError):
            raise SecretError("the secret cannot be decrypted with the configured secrets.key") from None

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"


def require_secret_box(box: SecretBox | None) -> SecretBox:
    """``box``, or a :class:`~gateway_core.errors.ConfigError` saying ``secrets.key`` is missing."""
    if box is None:
        raise ConfigError(NO_KEY_MESSAGE)
    return box
