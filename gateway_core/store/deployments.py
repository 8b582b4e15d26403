"""Deployments and routing rules managed in the database, as the gateway loads them.

A :class:`~gateway_core.store.models.DeploymentRecord` becomes a configuration deployment
(:class:`~gateway_core.config.DeploymentConfig`): ``provider``, ``upstream_model`` (the ``model`` sent
upstream), ``base_url``, ``weight``, the decrypted ``api_key``, and from ``settings`` the keys
:data:`SETTINGS_KEYS`. Its deployment id is ``db:<record id>``.

After changing records, publish on :data:`DEPLOYMENTS_CHANNEL` (:func:`notify_deployments_changed`):
every gateway then reloads its model table (``Gateway.reload_models``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import ValidationError

from gateway_core.config import DeploymentConfig
from gateway_core.events import DEPLOYMENTS_CHANNEL
from gateway_core.store.models import DeploymentRecord, RoutingRule
from gateway_core.store.secrets import NO_KEY_MESSAGE, SecretBox, SecretError

#: The keys of ``DeploymentRecord.settings``: the rest of a configuration deployment.
SETTINGS_KEYS = frozenset({"options", "timeout", "headers", "proxy", "drop_params"})


__all__ = [
    "DEPLOYMENTS_CHANNEL",
    "SETTINGS_KEYS",
    "InvalidRecord",
    "deployment_config",
    "enabled_deployments",
    "enabled_routing_rules",
    "notify_deployments_changed",
]


class InvalidRecord(ValueError):
    """A record the gateway cannot serve; the message says why (never a secret)."""


class EventPublisher(Protocol):
    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...


def deployment_id(record: DeploymentRecord) -> str:
    return f"db:{record.id}"


def deployment_config(record: DeploymentRecord, secret_box: SecretBox | None) -> DeploymentConfig:
    """The configuration deployment a record stands for; :class:`InvalidRecord` when it cannot be one."""
    settings = record.settings if record.settings is not None else {}
    if not isinstance(settings, Mapping):
        raise InvalidRecord("settings is not an object")
    unknown = sorted(set(settings) - SETTINGS_KEYS)
    if unknown:
        raise InvalidRecord(f"settings has unknown key(s): {', '.join(unknown)}")
    if not record.model_name or not record.model_name.strip():
        raise InvalidRecord("model_name is empty")
    api_key = None
    if record.api_key_encrypted:
        if secret_box is None:
            raise InvalidRecord(f"it has an encrypted api_key but {NO_KEY_MESSAGE}")
        try:
            api_key = secret_box.decrypt(record.api_key_encrypted)
        except SecretError:
            raise InvalidRecord(
                "its api_key cannot be decrypted with secrets.key (encrypted with another key, "
                "or damaged); list the old key in secrets.previous_keys or store the api_key again"
            ) from None
    data: dict[str, Any] = {
        "id": deployment_id(record),
        "provider": record.provider,
        "model": record.upstream_model or None,
        "base_url": record.base_url or None,
        "weight": record.weight,
        **settings,
    }
    if api_key is not None:
        data["api_key"] = api_key
    try:
        return DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'record'}: "
            f"{'unknown key' if error['type'] == 'extra_forbidden' else error['msg']}"
            for error in exc.errors()
        )
        raise InvalidRecord(problems) from None


async def enabled_deployments() -> list[DeploymentRecord]:
    """Enabled deployment records, oldest first."""
    return await DeploymentRecord.filter(enabled=True).order_by("created_at", "id")


async def enabled_routing_rules() -> list[RoutingRule]:
    """Enabled routing rules in the order they are tried: priority, then age."""
    return await RoutingRule.filter(enabled=True).order_by("priority", "created_at", "id")


async def notify_deployments_changed(events: EventPublisher | None) -> None:
    """Tell every gateway to reload deployments and routing rules (this one included, before returning)."""
    if events is not None:
        await events.publish(DEPLOYMENTS_CHANNEL, {})
