"""API keys in the database: creating (the secret is returned once), finding, listing and revoking.

A key is ``lg-`` followed by 43 URL-safe characters (256 random bits). Only its SHA-256 digest and a
short visible prefix (``lg-`` and 8 characters) are stored; the key itself cannot be recovered.

Changes that running gateways must see at once (revocation, and for the admin API any update or
delete of keys, users or organizations) are announced on the events channel :data:`KEYS_CHANNEL`;
every gateway then drops the affected keys from its in-process cache.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from gateway_core.store.models import ApiKey, BudgetPeriod, Organization, User

KEY_PREFIX = "lg-"
#: Characters of the key kept in clear to tell keys apart: ``lg-`` and 8 random characters.
VISIBLE_PREFIX_LENGTH = 11
#: The events channel announcing key changes; messages are described in :func:`notify_keys_changed`.
KEYS_CHANNEL = "lockgate:keys"


class KeyNotFound(LookupError):
    """No key has that id, prefix or secret."""


class AmbiguousKey(LookupError):
    """Several keys share the prefix given; use the key's id."""


class EventPublisher(Protocol):
    """What :func:`revoke_key` needs of the gateway's events bus (``gateway.events``)."""

    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...


def generate_key() -> str:
    """A new random API key (256 bits of entropy)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """The SHA-256 hex digest under which a key is stored and looked up."""
    return hashlib.sha256(key.encode()).hexdigest()


def visible_prefix(key: str) -> str:
    """The part of a key shown in listings."""
    return key[:VISIBLE_PREFIX_LENGTH]


def _as_utc(moment: datetime) -> datetime:
    """A timezone-aware datetime; a naive one is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expires(text: str, *, now: datetime | None = None) -> datetime:
    """When a key given ``--expires TEXT`` expires.

    ``TEXT`` is a duration from now (``90m``, ``12h``, ``30d``, ``2w``), a date (``2026-12-31``: the key
    expires at 00:00 UTC that day) or an ISO 8601 date and time (UTC unless it names a zone).
    Raises ``ValueError`` for anything else or for a moment in the past.
    """
    now = now or datetime.now(UTC)
    match = _DURATION.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        if amount <= 0:
            raise ValueError(f"the duration {text!r} must be positive")
        moment = now + timedelta(**{_UNITS[unit]: amount})
    else:
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
                day = date.fromisoformat(text.strip())
                moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            else:
                moment = _as_utc(datetime.fromisoformat(text.strip()))
        except ValueError:
            raise ValueError(
                f"{text!r} is neither a duration (30d, 12h, 2w) nor a date (2026-12-31)"
            ) from None
    if moment <= now:
        raise ValueError(f"the expiry {moment.isoformat()} is in the past")
    return moment


async def _user(user: User | uuid.UUID | str | None) -> User | None:
    if user is None or isinstance(user, User):
        return user
    found = await User.get_or_none(id=user)
    if found is None:
        raise LookupError(f"no user has the id {user}")
    return found


async def _org(org: Organization | uuid.UUID | str | None) -> Organization | None:
    if org is None or isinstance(org, Organization):
        return org
    found = await Organization.get_or_none(id=org)
    if found is None:
        raise LookupError(f"no organization has the id {org}")
    return found


async def create_key(
    name: str,
    *,
    user: User | uuid.UUID | str | None = None,
    org: Organization | uuid.UUID | str | None = None,
    models: Sequence[str] | None = None,
    expires_at: datetime | None = None,
    scopes: Sequence[str] = (),
    metadata: Mapping[str, Any] | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    max_parallel: int | None = None,
    budget_limit: Decimal | float | None = None,
    budget_period: BudgetPeriod | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return ``(record, secret)``.

    The secret is returned this once and never stored: hand it to its user now. ``user`` and
    ``org`` (objects or ids) own the key; a key without ``org`` belongs to its user's organization.
    ``models`` lists the model names or globs the key may use (``None``: every model).
    ``expires_at`` is timezone-aware (a naive datetime is taken as UTC). Limits and budget are stored
    for the policy plugins. Raises ``ValueError`` for invalid values and ``LookupError`` for an
    unknown user or organization id.
    """
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("the key's name must have 1 to 200 characters")
    if models is not None:
        models = [m.strip() for m in models]
        if any(not m for m in models):
            raise ValueError("model names must not be empty")
    if expires_at is not None:
        expires_at = _as_utc(expires_at)
        if expires_at <= datetime.now(UTC):
            raise ValueError("expires_at is in the past")
    for label, value in (("rpm_limit", rpm_limit), ("tpm_limit", tpm_limit), ("max_parallel", max_parallel)):
        if value is not None and value < 0:
            raise ValueError(f"{label} must not be negative")
    if budget_limit is not None and budget_limit < 0:
        raise ValueError("budget_limit must not be negative")
    owner = await _user(user)
    organization = await _org(org)
    secret = generate_key()
    record = await ApiKey.create(
        name=name,
        prefix=visible_prefix(secret),
        digest=key_digest(secret),
        user=owner,
        org=organization,
        expires_at=expires_at,
        allowed_models=list(models) if models is not None else None,
        scopes=list(scopes),
        metadata=dict(metadata or {}),
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        max_parallel=max_parallel,
        budget_limit=Decimal(str(budget_limit)) if budget_limit is not None else None,
        budget_period=budget_period,
    )
    return record, secret


async def find_key(id_or_prefix: str) -> ApiKey:
    """The key with this id, visible prefix or whole secret (user and organization loaded).

    Raises :class:`KeyNotFound`, or :class:`AmbiguousKey` when several keys share a prefix.
    """
    value = id_or_prefix.strip()
    query = ApiKey.all().select_related("user", "org")
    try:
        key_id = uuid.UUID(value)
    except ValueError:
        pass
    else:
        found = await query.get_or_none(id=key_id)
        if found is None:
            raise KeyNotFound(f"no API key has the id {value}")
        return found
    if value.startswith(KEY_PREFIX) and len(value) > VISIBLE_PREFIX_LENGTH:
        found = await query.get_or_none(digest=key_digest(value))
        if found is None:
            raise KeyNotFound("no API key matches the key given")
        return found
    matches = await query.filter(prefix=value).limit(2)
    if not matches:
        raise KeyNotFound(f"no API key has the id or prefix {value!r}")
    if len(matches) > 1:
        raise AmbiguousKey(f"several API keys start with {value!r}: give the key's id")
    return matches[0]


async def notify_keys_changed(
    events: EventPublisher | None,
    *,
    key_id: str | uuid.UUID | None = None,
    user_id: str | uuid.UUID | None = None,
    org_id: str | uuid.UUID | None = None,
) -> None:
    """Tell every gateway to drop cached keys: one key, a user's or an organization's keys.

    Call it after anything that changes how a key authenticates (revoking, updating or deleting a
    key; disabling or deleting a user; deleting an organization). Without any id, every gateway
    empties its key cache. Publishes ``{"key_id"?, "user_id"?, "org_id"?}`` on :data:`KEYS_CHANNEL`;
    with ``events=None`` nothing is sent and caches expire on their own (``cache_ttl_seconds``).
    """
    if events is None:
        return
    message = {
        field: str(value)
        for field, value in (("key_id", key_id), ("user_id", user_id), ("org_id", org_id))
        if value is not None
    }
    await events.publish(KEYS_CHANNEL, message)


async def revoke_key(id_or_prefix: str, *, events: EventPublisher | None = None) -> ApiKey:
    """Revoke the key with this id or prefix (see :func:`find_key`) and return it.

    Revoking is final and idempotent: a key revoked earlier keeps its first ``revoked_at``. With
    ``events`` (``gateway.events``), running gateways are told at once; see :func:`notify_keys_changed`.
    """
    key = await find_key(id_or_prefix)
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        await key.save(update_fields=["revoked_at", "updated_at"])
    await notify_keys_changed(events, key_id=key.id)
    return key


async def list_keys(
    *,
    user: User | uuid.UUID | str | None = None,
    org: Organization | uuid.UUID | str | None = None,
    include_revoked: bool = True,
) -> list[ApiKey]:
    """Keys, oldest first, with user and organization loaded; optionally those of one user or org."""
    query = ApiKey.all().select_related("user", "org").order_by("created_at")
    if user is not None:
        query = query.filter(user_id=user.id if isinstance(user, User) else user)
    if org is not None:
        query = query.filter(org_id=org.id if isinstance(org, Organization) else org)
    if not include_revoked:
        query = query.filter(revoked_at__isnull=True)
    return await query


def key_status(key: ApiKey, *, now: datetime | None = None) -> str:
    """``revoked``, ``expired`` or ``active``."""
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= (now or datetime.now(UTC)):
        return "expired"
    return "active"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def key_summary(key: ApiKey) -> dict[str, Any]:
    """A key as listings show it (never the secret, nor its digest); user and org must be loaded."""
    owner: User | None = key.user
    org: Organization | None = key.org
    return {
        "id": str(key.id),
        "name": key.name,
        "prefix": key.prefix,
        "owner": owner.email if owner is not None else None,
        "user_id": str(owner.id) if owner is not None else None,
        "org": org.name if org is not None else None,
        "org_id": str(org.id) if org is not None else None,
        "models": key.allowed_models,
        "status": key_status(key),
        "created_at": _iso(key.created_at),
        "last_used_at": _iso(key.last_used_at),
        "expires_at": _iso(key.expires_at),
        "revoked_at": _iso(key.revoked_at),
    }
