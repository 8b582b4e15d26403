"""``/admin/api/users``: people who log in to the admin API, and owners of API keys.

Only admins manage users; an organization-bound admin manages the users of its organization tree and
can only create users bound to it. Nobody changes their own role, organization or active flag, or
deletes themselves: that keeps the last admin from locking everyone out by mistake.
"""

from __future__ import annotations

import asyncio
import uuid

from gateway_core.admin import schemas
from gateway_core.admin.api import Call, Operation, conflict, fetch_page, forbidden, not_found, unprocessable
from gateway_core.admin.auth import user_out
from gateway_core.store import models
from gateway_core.store.models import Role


async def visible_user(call: Call) -> models.User:
    """The user of the path, if the caller may see them (404 otherwise)."""
    user = await models.User.get_or_none(id=call.path_id())
    if user is None or not await call.user.may_act_in(_org_of(user)):
        raise not_found("user")
    return user


def _org_of(user: models.User) -> uuid.UUID | None:
    org_id = user.org_id  # type: ignore[attr-defined]
    return uuid.UUID(str(org_id)) if org_id else None


async def _check_org(call: Call, org_id: uuid.UUID | None) -> None:
    """An organization the caller may put users in, and that exists."""
    if call.user.scoped:
        if org_id is None:
            raise forbidden(
                "You can only manage users bound to your organization or its descendants.", param="org_id"
            )
        await call.user.require_org(org_id, "org_id")
    if org_id is not None and not await models.Organization.exists(id=org_id):
        raise unprocessable("No organization has the id given as org_id.", param="org_id")


def _email(value: str) -> str:
    from gateway_core.store import users  # passlib loads on first use, not with the gateway

    try:
        return users.normalize_email(value)
    except users.InvalidEmail:
        raise unprocessable("email: not an e-mail address (local@domain.tld).", param="email") from None


async def list_users(call: Call) -> schemas.UserList:
    q: schemas.UserQuery = call.query
    query = models.User.all()
    orgs = await call.user.orgs()
    if orgs is not None:
        query = query.filter(org_id__in=list(orgs))
    if q.org_id is not None:
        query = query.filter(org_id=q.org_id)
    if q.role is not None:
        query = query.filter(role=q.role)
    if q.is_active is not None:
        query = query.filter(is_active=q.is_active)
    if q.email is not None:
        query = query.filter(email=q.email.strip().lower())
    rows, paging = await fetch_page(query, q, "created_at", "id")
    return schemas.UserList(data=[user_out(user) for user in rows], **paging)


async def get_user(call: Call) -> schemas.User:
    return user_out(await visible_user(call))


async def create_user(call: Call) -> schemas.User:
    from gateway_core.store import users

    body: schemas.UserCreate = call.body
    email = _email(body.email)
    await _check_org(call, body.org_id)
    if await models.User.exists(email=email):
        raise conflict(f"A user with the e-mail address {email} exists.", param="email")
    try:
        async with call.api.password_slots:
            user = await users.create_user(
                email, body.password, body.role, body.org_id, name=body.name, metadata=body.metadata
            )
    except users.InvalidPassword as exc:
        raise unprocessable(f"password: {exc}", param="password") from None
    except users.UserExists:
        raise conflict(f"A user with the e-mail address {email} exists.", param="email") from None
    if not body.is_active:
        user.is_active = False
        await user.save(update_fields=["is_active", "updated_at"])
    return user_out(user)


async def update_user(call: Call) -> schemas.User:
    body: schemas.UserUpdate = call.body
    user = await visible_user(call)
    changes = body.model_dump(exclude_unset=True)
    changes.pop("password", None)
    is_self = user.id == call.user.user.id
    for name, label in (("role", "role"), ("org_id", "organization"), ("is_active", "active flag")):
        if is_self and name in changes and str(changes[name]) != str(getattr(user, name)):
            raise forbidden(f"You cannot change your own {label}.", param=name)
    if "metadata" in changes and body.metadata is None:
        changes["metadata"] = {}
    if "email" in changes:
        changes["email"] = _email(changes["email"])
        if changes["email"] != user.email and await models.User.exists(email=changes["email"]):
            raise conflict(f"A user with the e-mail address {changes['email']} exists.", param="email")
    if "org_id" in changes:
        await _check_org(call, body.org_id)
    if "password" in body.model_fields_set:
        if body.password is None:
            user.password_hash = None  # the user can no longer log in
        else:
            async with call.api.password_slots:
                user.password_hash = await _hash(body.password)
    user.update_from_dict(changes)
    await user.save()
    # Keys carry their user's active flag, limits and quotas: let every gateway reload them.
    await call.keys_changed(user_id=user.id)
    return user_out(user)


async def _hash(password: str) -> str:
    from gateway_core.store import users

    try:
        users.check_password_strength(password)
    except users.InvalidPassword as exc:
        raise unprocessable(f"password: {exc}", param="password") from None
    return await asyncio.to_thread(users.hash_password, password)


async def delete_user(call: Call) -> None:
    user = await visible_user(call)
    if user.id == call.user.user.id:
        raise forbidden("You cannot delete yourself.")
    await user.delete()  # their API keys go with them
    await call.keys_changed(user_id=user.id)


OPERATIONS = [
    Operation(
        "GET", "/users", list_users, "List users", "users", query=schemas.UserQuery, response=schemas.UserList
    ),
    Operation(
        "POST",
        "/users",
        create_user,
        "Create a user",
        "users",
        role=Role.ADMIN,
        body=schemas.UserCreate,
        response=schemas.User,
        status=201,
        description="The password is stored as an argon2 hash; it is never returned.",
        errors=(409,),
    ),
    Operation("GET", "/users/{id}", get_user, "Get a user", "users", response=schemas.User, errors=(404,)),
    Operation(
        "PATCH",
        "/users/{id}",
        update_user,
        "Update a user",
        "users",
        role=Role.ADMIN,
        body=schemas.UserUpdate,
        response=schemas.User,
        description=(
            "Change the e-mail address, name, role, organization, active flag, metadata or password "
            "(`null` removes the password: the user can no longer log in). Nobody changes their own "
            "role, organization or active flag. The user's keys take new `metadata.limits` and "
            "`metadata.quotas` at once, on every gateway."
        ),
        errors=(404, 409),
    ),
    Operation(
        "DELETE",
        "/users/{id}",
        delete_user,
        "Delete a user",
        "users",
        role=Role.ADMIN,
        status=204,
        description="Deletes the user's API keys too; they stop working at once.",
        errors=(404,),
    ),
]
