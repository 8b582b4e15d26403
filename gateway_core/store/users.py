"""Users of the admin API: e-mail addresses, roles, argon2 password hashes (passlib).

Hashing a password takes a large fraction of a second on purpose: it runs in a worker thread, only for
the admin API and the CLI, never on the gateway's request path. Only the hash is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from typing import Any

from passlib.context import CryptContext  # type: ignore[import-untyped]
from tortoise.exceptions import IntegrityError

from gateway_core.store.models import Organization, Role, User

#: argon2id with passlib's defaults; hashes of older schemes or parameters are upgraded on login.
PASSWORDS = CryptContext(schemes=["argon2"], deprecated="auto")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")


class InvalidEmail(ValueError):
    """Not an e-mail address."""


class InvalidPassword(ValueError):
    """A password too short or too long."""


class UserExists(ValueError):
    """A user with that e-mail address exists."""


def normalize_email(email: str) -> str:
    """The address, trimmed and lower-cased (addresses are unique case-insensitively).

    Raises :class:`InvalidEmail` unless it looks like ``local@domain.tld`` (at most 320 characters).
    """
    value = email.strip().lower()
    if len(value) > 320 or not _EMAIL.match(value):
        raise InvalidEmail(f"{email!r} is not an e-mail address")
    return value


def check_password_strength(password: str) -> None:
    """Raise :class:`InvalidPassword` for a password that is too short or too long."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidPassword(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidPassword(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    """The argon2 hash of ``password``. Slow on purpose: call it in a thread from async code."""
    password_hash: str = PASSWORDS.hash(password)
    return password_hash


def verify_password(password: str, password_hash: str | None) -> bool:
    """Whether ``password`` matches ``password_hash`` (constant-time; ``False`` without a hash).

    Slow on purpose, like :func:`hash_password`. A missing hash still costs one verification, so the
    time taken does not tell whether the user has a password.
    """
    if not password_hash:
        PASSWORDS.dummy_verify()
        return False
    try:
        return bool(PASSWORDS.verify(password, password_hash))
    except ValueError:  # not a hash passlib knows
        return False


async def create_user(
    email: str,
    password: str | None = None,
    role: Role | str = Role.READ,
    org: Organization | uuid.UUID | str | None = None,
    *,
    name: str = "",
    metadata: dict[str, Any] | None = None,
) -> User:
    """Create a user. ``password=None`` makes a user who owns keys but cannot log in.

    ``metadata`` is free-form; its ``limits`` and ``quotas`` apply to the user's keys.

    ``org`` is an organization, its id or its name. Raises :class:`InvalidEmail`,
    :class:`InvalidPassword`, :class:`UserExists`, ``ValueError`` for an unknown role and
    ``LookupError`` for an unknown organization.
    """
    address = normalize_email(email)
    role = Role(role)
    organization = (
        await find_organization(org) if org is not None and not isinstance(org, Organization) else org
    )
    password_hash = None
    if password is not None:
        check_password_strength(password)
        password_hash = await asyncio.to_thread(hash_password, password)
    if await User.exists(email=address):
        raise UserExists(f"a user with the e-mail address {address} exists")
    try:
        return await User.create(
            email=address,
            name=name,
            role=role,
            org=organization,
            password_hash=password_hash,
            metadata=metadata or {},
        )
    except IntegrityError:  # created concurrently
        raise UserExists(f"a user with the e-mail address {address} exists") from None


async def set_password(user: User, password: str) -> None:
    """Replace the user's password (hashed in a thread)."""
    check_password_strength(password)
    user.password_hash = await asyncio.to_thread(hash_password, password)
    await user.save(update_fields=["password_hash", "updated_at"])


async def authenticate_user(email: str, password: str) -> User | None:
    """The active user with this e-mail address and password, or ``None``.

    Takes the same time whether or not the address is known. Upgrades an outdated hash.
    """
    try:
        address = normalize_email(email)
    except InvalidEmail:
        address = None
    user = await User.get_or_none(email=address) if address else None
    password_hash = user.password_hash if user is not None else None
    ok, new_hash = await asyncio.to_thread(_verify_and_update, password, password_hash)
    if not ok or user is None or not user.is_active:
        return None
    if new_hash is not None:
        user.password_hash = new_hash
        await user.save(update_fields=["password_hash", "updated_at"])
    return user


def _verify_and_update(password: str, password_hash: str | None) -> tuple[bool, str | None]:
    if not password_hash:
        PASSWORDS.dummy_verify()
        return False, None
    try:
        result: tuple[bool, str | None] = PASSWORDS.verify_and_update(password, password_hash)
        return result
    except ValueError:
        return False, None


async def find_user(email_or_id: str | uuid.UUID) -> User:
    """The user with this id or e-mail address; ``LookupError`` when there is none."""
    user: User | None
    try:
        user = await User.get_or_none(id=uuid.UUID(str(email_or_id)))
    except ValueError:
        try:
            user = await User.get_or_none(email=normalize_email(str(email_or_id)))
        except InvalidEmail:
            user = None
    if user is None:
        raise LookupError(f"no user has the id or e-mail address {email_or_id!r}")
    return user


async def find_organization(name_or_id: str | uuid.UUID) -> Organization:
    """The organization with this id or name; ``LookupError`` when there is none."""
    org: Organization | None = None
    with contextlib.suppress(ValueError):
        org = await Organization.get_or_none(id=uuid.UUID(str(name_or_id)))
    if org is None:
        org = await Organization.get_or_none(name=str(name_or_id))
    if org is None:
        raise LookupError(f"no organization has the id or name {str(name_or_id)!r}")
    return org


def user_summary(user: User) -> dict[str, Any]:
    """A user as listings show it (never the password hash)."""
    return {
        "id": str(user.id),
        "email": user.email,
        "name": user.name,
        "role": str(user.role),
        "org_id": str(user.org_id) if user.org_id else None,  # type: ignore[attr-defined]
        "is_active": user.is_active,
        "created_at": user.created_at.isoformat(),
    }
