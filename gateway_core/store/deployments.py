"""Deployments and routing rules managed in the database, as the gateway loads them.

A :class:`~gateway_core.store.models.DeploymentRecord` becomes a configuration deployment
(:class:`~gateway_core.config.DeploymentConfig`): ``provider``, ``upstream_model`` (the ``model`` sent
upstream), ``base_url``, ``weight``, the decrypted ``api_key``, and from ``settings`` the keys
:data:`SETTINGS_KEYS`, validated as the configuration's are. Its deployment id is ``db:<record id>``.

Secrets are stored encrypted with ``secrets.key``: the record's ``api_key_encrypted`` and, in
``settings["credentials"]``, each credential's ``api_key_encrypted`` (the configuration's ``api_key``).
:func:`rotate_secrets` re-encrypts all of them with the current key.

After changing records, publish on :data:`DEPLOYMENTS_CHANNEL` (:func:`notify_deployments_changed`):
every gateway then reloads its model table (``Gateway.reload_models``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from gateway_core.config import DeploymentConfig
from gateway_core.events import DEPLOYMENTS_CHANNEL
from gateway_core.store.models import DeploymentRecord, RoutingRule
from gateway_core.store.secrets import NO_KEY_MESSAGE, SecretBox, SecretError

if TYPE_CHECKING:
    from gateway_core.store.database import Database

#: The keys of ``DeploymentRecord.settings``: the rest of a configuration deployment.
SETTINGS_KEYS = frozenset(
    {
        "options",
        "timeout",
        "headers",
        "proxy",
        "proxies",
        "proxy_pool",
        "drop_params",
        "rpm",
        "tpm",
        "credentials",
        "credential_strategy",
        "price",
        "health_check",
        "optional",
    }
)


__all__ = [
    "DEPLOYMENTS_CHANNEL",
    "SETTINGS_KEYS",
    "InvalidRecord",
    "deployment_config",
    "enabled_deployments",
    "enabled_routing_rules",
    "notify_deployments_changed",
    "rotate_secrets",
]


class InvalidRecord(ValueError):
    """A record the gateway cannot serve; the message says why (never a secret).

    ``param`` names the field at fault as the admin API spells it (``credentials[0].rpm``), or is
    None when no single field is.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


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
        raise InvalidRecord("model_name is empty", param="model_name")
    data: dict[str, Any] = {
        "id": deployment_id(record),
        "provider": record.provider,
        "model": record.upstream_model or None,
        "base_url": record.base_url or None,
        "weight": record.weight,
        **settings,
    }
    if record.api_key_encrypted:
        data["api_key"] = _decrypt(record.api_key_encrypted, secret_box)
    if "credentials" in settings:
        data["credentials"] = _credentials(settings["credentials"], secret_box)
    try:
        return DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(
            f"{_field_name(error['loc']) or 'record'}: "
            f"{'unknown key' if error['type'] == 'extra_forbidden' else error['msg']}"
            for error in errors
        )
        first = errors[0]
        param = _field_name(first["loc"]) or _named_field(str(first["msg"]))
        raise InvalidRecord(problems, param=param) from None


def _decrypt(token: object, secret_box: SecretBox | None, credential: str | None = None) -> str:
    """The plaintext of a stored ``api_key``: the deployment's, or ``credential``'s
    (``credentials[1]``); :class:`InvalidRecord` saying why it cannot be had."""
    param = "api_key" if credential is None else f"{credential}.api_key"
    if secret_box is None:
        raise InvalidRecord(
            f"{credential or 'it'} has an encrypted api_key but {NO_KEY_MESSAGE}", param=param
        )
    try:
        if not isinstance(token, str):
            raise SecretError("not a token")
        return secret_box.decrypt(token)
    except SecretError:
        whose = "its api_key" if credential is None else f"the api_key of {credential}"
        raise InvalidRecord(
            f"{whose} cannot be decrypted with secrets.key (encrypted with another key, "
            "or damaged); list the old key in secrets.previous_keys or store the api_key again",
            param=param,
        ) from None


def _credentials(stored: object, secret_box: SecretBox | None) -> object:
    """Stored credentials as the configuration writes them: ``api_key_encrypted`` decrypted into
    ``api_key``. What is not a list of objects is left for the validation to describe."""
    if not isinstance(stored, list):
        return stored
    credentials: list[object] = []
    for index, item in enumerate(stored):
        if isinstance(item, Mapping):
            where = f"credentials[{index}]"
            item = dict(item)
            if "api_key" in item:
                raise InvalidRecord(
                    f"{where} holds an api_key in clear; store it again through the admin API",
                    param=f"{where}.api_key",
                )
            if item.get("api_key_encrypted") is not None:
                item["api_key"] = _decrypt(item.pop("api_key_encrypted"), secret_box, where)
            item.pop("api_key_encrypted", None)
        credentials.append(item)
    return credentials


def _field_name(loc: tuple[int | str, ...]) -> str:
    """A location in a configuration deployment as the admin API names the field:
    ``credentials[0].rpm``, ``upstream_model`` for ``model``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = "upstream_model" if not out and part == "model" else part
            out += f".{name}" if out else name
    return out


_WORD = re.compile(r"[a-z_]+")


def _named_field(message: str) -> str | None:
    """The first deployment field a message about the whole deployment names (``set only one of
    proxy, proxies`` names ``proxy``), else None."""
    words: list[str] = _WORD.findall(message)
    return next((word for word in words if word in SETTINGS_KEYS), None)


async def rotate_secrets(database: Database, secret_box: SecretBox) -> tuple[int, list[str]]:
    """Re-encrypt every secret of every deployment record (enabled or not) with the current
    ``secrets.key``: the ``api_key`` and each credential's.

    Returns how many secrets were re-encrypted and where the ones that cannot be decrypted are
    (``<record id>: credentials[1].api_key``); those are left as they are. Each record is rewritten in
    a transaction of its own, locked against concurrent changes (PostgreSQL).
    """
    rotated = 0
    failed: list[str] = []
    for record_id in await DeploymentRecord.all().order_by("created_at", "id").values_list("id", flat=True):
        async with database.transaction():
            record = await DeploymentRecord.filter(id=record_id).select_for_update().first()
            if record is None:  # deleted meanwhile
                continue
            done, unreadable = _rotate_record(record, secret_box)
            failed += [f"{record.id}: {field}" for field in unreadable]
            if done:
                rotated += done
                await record.save(update_fields=["api_key_encrypted", "settings", "updated_at"])
    return rotated, failed


def _rotate_record(record: DeploymentRecord, secret_box: SecretBox) -> tuple[int, list[str]]:
    """Re-encrypt the secrets of ``record`` in place: how many were, and the fields that cannot be."""
    rotated = 0
    unreadable: list[str] = []

    def rotate(token: object, field: str) -> object:
        nonlocal rotated
        try:
            if not isinstance(token, str):
                raise SecretError("not a token")
            new = secret_box.rotate(token)
        except SecretError:
            unreadable.append(field)
            return token
        rotated += 1
        return new

    if record.api_key_encrypted:
        record.api_key_encrypted = str(rotate(record.api_key_encrypted, "api_key"))
    settings = record.settings if isinstance(record.settings, Mapping) else {}
    stored = settings.get("credentials")
    if isinstance(stored, list):
        credentials = []
        for index, item in enumerate(stored):
            if isinstance(item, Mapping) and item.get("api_key_encrypted") is not None:
                token = rotate(item["api_key_encrypted"], f"credentials[{index}].api_key")
                item = {**item, "api_key_encrypted": token}
            credentials.append(item)
        record.settings = {**settings, "credentials": credentials}
    return rotated, unreadable


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
