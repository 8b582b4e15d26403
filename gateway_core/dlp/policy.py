"""DLP policies: which entity types are acted on, how, in which direction; and where they are set.

The ``dlp:`` section of the configuration holds the gateway's default policy, the filters to run and
overrides per model group and per organization. Organizations and keys managed in the database carry
their own override (``metadata.dlp``, set through the admin API); keys listed in the configuration
take it as ``dlp:``. An override names only what it changes: for a request the gateway's policy is
taken, then the model group's, the organizations' (the farthest ancestor first, the key's own last),
then the key's; each field set replaces the one before, and ``entities`` are merged type by type.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

Action = Literal["redact", "mask", "hash", "block", "pseudonymize", "log", "off"]
Direction = Literal["request", "response", "both"]
OnError = Literal["block", "allow"]

#: Actions, from the strongest to the weakest (when two filters find overlapping values of
#: different types, the stronger action wins).
ACTIONS: tuple[Action, ...] = ("block", "redact", "hash", "pseudonymize", "mask", "log", "off")
#: The key of ``entities`` that sets the action of every type not listed.
EVERY_TYPE = "*"


class _PolicyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(None, description="false turns DLP off for these requests")
    direction: Direction | None = Field(
        None, description="filter the request, the response, or both (default: request)"
    )
    entities: dict[str, Action] = Field(
        default_factory=dict,
        description="the action per entity type; `*` sets it for every type not listed (default: `*: redact`)",
    )
    on_error: OnError | None = Field(
        None, description="when a filter fails or times out: block (503, default) or allow (logged)"
    )


class DlpOverride(_PolicyFields):
    """A DLP policy that names only what it changes (per model group, organization or key)."""

    filters: list[str] | None = Field(
        None, description="which of the configured filters run (default: all of `dlp.filters`)"
    )


class DlpConfig(_PolicyFields):
    """The ``dlp:`` section: the filters, the gateway's default policy and its overrides."""

    filters: dict[str, dict[str, Any] | None] = Field(
        default_factory=dict,
        description="the filters to run, each with its options (`pii_patterns: {}`); none: DLP is off",
    )
    timeout: float = Field(
        2.0, gt=0, description="seconds a filter may take on one text before the request is refused"
    )
    hash_key: SecretStr | None = Field(
        None, description="key of the `hash` action's digests (default: derived from `secrets.key`)"
    )
    stream_holdback_chars: int = Field(
        4096,
        ge=64,
        description="the most characters of a streamed answer held back while they could become a match",
    )
    models: dict[str, DlpOverride] = Field(default_factory=dict, description="overrides by model group name")
    organizations: dict[str, DlpOverride] = Field(
        default_factory=dict, description="overrides by organization id or name"
    )
