"""API keys listed in the configuration, for the embedded default and small deployments.

Each key is given either as its SHA-256 hex digest (``sha256:``) or as a secret reference
(``key: ${ENV_VAR}`` / ``${file:path}``); only digests are kept in memory. Keys from the database come
through the same auth hook from another plugin.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from gateway_core import ConfigError, Gateway, Principal, RequestContext, hookimpl
from gateway_core.dlp import overrides
from gateway_core.dlp.policy import DlpOverride

NAME = "config_keys"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    key: SecretStr | None = None
    sha256: str | None = None
    models: list[str] | None = Field(
        None, description="model names or globs this key may use; all when unset"
    )
    user: str | None = None
    org: str | None = None
    scopes: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    rpm: int | None = Field(None, ge=0, description="requests per minute (rate_limits plugin)")
    tpm: int | None = Field(None, ge=0, description="tokens per minute (rate_limits plugin)")
    max_parallel: int | None = Field(
        None, ge=0, description="requests in flight at once (rate_limits plugin)"
    )
    dlp: DlpOverride | None = Field(
        None, description="the key's DLP override: what it sets replaces the gateway's policy (docs/dlp.md)"
    )

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of `key` (a secret reference) or `sha256` (the key's digest)")
        if self.key is not None and len(self.key.get_secret_value()) < 16:
            raise ValueError("`key` must be at least 16 characters")
        if self.sha256 is not None and not _HEX64.match(self.sha256.lower()):
            raise ValueError("`sha256` must be 64 hexadecimal characters")
        return self

    @model_validator(mode="after")
    def _dlp_not_in_metadata(self) -> KeyEntry:
        if overrides.METADATA_KEY in self.metadata:
            raise ValueError("give the key's DLP override as `dlp:`, not in `metadata`")
        return self


class ConfigKeysOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(default_factory=list)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _metadata(entry: KeyEntry) -> dict[str, Any]:
    """The entry's metadata, with its limits where policies read a key's limits (``limits``) and its
    DLP override where the DLP engine reads it (``dlp``, a dict)."""
    metadata: dict[str, Any] = dict(entry.metadata)
    if entry.rpm is not None or entry.tpm is not None or entry.max_parallel is not None:
        metadata["limits"] = {"rpm": entry.rpm, "tpm": entry.tpm, "max_parallel": entry.max_parallel}
    if entry.dlp is not None:
        metadata[overrides.METADATA_KEY] = overrides.stored(entry.dlp)
    return metadata


@hookimpl
def lockgate_startup(gateway: Gateway) -> None:
    options = gateway.config.plugin_config(NAME, ConfigKeysOptions)
    table: dict[str, Principal] = {}
    for entry in options.keys:
        key_digest = entry.sha256.lower() if entry.sha256 else digest(entry.key.get_secret_value())  # type: ignore[union-attr]
        if key_digest in table:
            raise ConfigError(
                f"{gateway.config.source}: plugins.{NAME}.keys: key {entry.name!r} is listed twice"
            )
        problem = overrides.override_problem(entry.dlp, gateway.config) if entry.dlp is not None else None
        if problem is not None:
            field, message = problem
            raise ConfigError(
                f"{gateway.config.source}: plugins.{NAME}.keys: key {entry.name!r}: dlp.{field}: {message}"
            )
        table[key_digest] = Principal(
            key_id=f"{NAME}:{entry.name}",
            name=entry.name,
            user_id=entry.user,
            org_id=entry.org,
            scopes=frozenset(entry.scopes),
            allowed_models=tuple(entry.models) if entry.models is not None else None,
            metadata=_metadata(entry),
        )
    gateway.plugin_state[NAME] = table


@hookimpl
def lockgate_authenticate(ctx: RequestContext, credential: str | None) -> Principal | None:
    if not credential:
        return None
    # Looking up the SHA-256 digest, not the key, keeps the comparison's timing independent of the
    # secret: an attacker cannot steer the digest's bytes.
    table: dict[str, Principal] = ctx.gateway.plugin_state[NAME]
    return table.get(digest(credential))
