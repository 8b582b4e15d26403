"""DLP overrides of keys and organizations: checked against the configuration, stored as plain JSON.

An override set through the admin API (``metadata.dlp`` of a key or an organization) or on a key of
the configuration (``plugins.config_keys.keys[].dlp``) may name only filters listed under
``dlp.filters``, and may choose the ``hash`` action only when the gateway has a key to hash with
(``dlp.hash_key``, else one derived from ``secrets.key``). Entity types are not checked here: the
engine knows which types the configured filters report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway_core.dlp.policy import DlpOverride

if TYPE_CHECKING:
    from gateway_core.config import GatewayConfig

#: Where an override is kept in the ``metadata`` of keys and organizations, and where a principal's
#: ``metadata`` holds the key's own override (a dict, absent when none). Each entry of a principal's
#: ``metadata.org_ancestors`` holds its organization's override there too (a dict or None).
METADATA_KEY = "dlp"
#: Where a principal's ``metadata`` holds the override of the key's organization (absent when none).
ORG_METADATA_KEY = "org_dlp"


def can_hash(config: GatewayConfig) -> bool:
    """Whether the gateway has a key for the ``hash`` action's digests."""
    return (config.dlp is not None and config.dlp.hash_key is not None) or config.secrets is not None


def override_problem(override: DlpOverride, config: GatewayConfig) -> tuple[str, str] | None:
    """Why ``override`` cannot be used with ``config``, as ``(field, message)``; None when it can.

    ``field`` is the path of the offending value within the override (``filters``,
    ``entities.EMAIL_ADDRESS``).
    """
    configured = sorted(config.dlp.filters) if config.dlp is not None else []
    unknown = [name for name in override.filters or () if name not in configured]
    if unknown:
        names = ", ".join(f"`{name}`" for name in unknown)
        known = ", ".join(f"`{name}`" for name in configured) or "none (`dlp.filters` is empty)"
        what = "is not a configured filter" if len(unknown) == 1 else "are not configured filters"
        return "filters", f"{names} {what}; the configured filters: {known}."
    if not can_hash(config):
        for entity_type, action in override.entities.items():
            if action == "hash":
                return (
                    f"entities.{entity_type}",
                    "the `hash` action needs a key: set `dlp.hash_key` or `secrets.key` in the "
                    "gateway's configuration, or choose another action.",
                )
    return None


def stored(override: DlpOverride) -> dict[str, Any]:
    """The override as it is stored and as principals carry it: only the fields it sets."""
    return override.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
