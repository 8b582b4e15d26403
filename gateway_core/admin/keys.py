"""``/admin/api/keys``: API keys of the gateway.

The secret is returned once, by the create call, in the field ``secret``; listings show its visible
``prefix``. A key belongs to an organization (``org_id``) or, without one, to its user's organization;
organization-bound users see and manage the keys of their organization tree. Every change is announced
on ``lockgate:keys``, so every gateway drops the key from its cache at once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from tortoise.expressions import Q

from gateway_core.admin import dlp, schemas
from gateway_core.admin.api import Call, Operation, fetch_page, forbidden, not_found, unprocessable
from gateway_core.store import keys, models
from gateway_core.store.models import Role


def key_out(key: models.ApiKey) -> dict[str, Any]:
    metadata, override = dlp.shown(key.metadata)
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "status": keys.key_status(key),
        "user_id": key.user_id,  # type: ignore[attr-defined]
        "org_id": key.org_id,  # type: ignore[attr-defined]
        "models": key.allowed_models,
        "scopes": key.scopes or [],
        "metadata": metadata,
        "dlp": override,
        "rpm_limit": key.rpm_limit,
        "tpm_limit": key.tpm_limit,
        "max_parallel": key.max_parallel,
        "budget_limit": float(key.budget_limit) if key.budget_limit is not None else None,
        "budget_period": key.budget_period,
        "created_at": key.created_at,
        "updated_at": key.updated_at,
        "last_used_at": key.last_used_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    }


def _scope_filter(orgs: frozenset[uuid.UUID]) -> Q:
    """Keys whose organization (their own, else their user's) is one of ``orgs``."""
    ids = list(orgs)
    return Q(org_id__in=ids) | Q(Q(org_id__isnull=True), Q(user__org_id__in=ids))


async def visible_key(call: Call) -> models.ApiKey:
    """The key of the path, if the caller may see it (404 otherwise)."""
    query = models.ApiKey.filter(id=call.path_id())
    orgs = await call.user.orgs()
    if orgs is not None:
        query = query.filter(_scope_filter(orgs))
    key = await query.first()
    if key is None:
        raise not_found("API key")
    return key


async def list_keys(call: Call) -> schemas.KeyList:
    q: schemas.KeyQuery = call.query
    query = models.ApiKey.all()
    orgs = await call.user.orgs()
    if orgs is not None:
        query = query.filter(_scope_filter(orgs))
    if q.user_id is not None:
        query = query.filter(user_id=q.user_id)
    if q.org_id is not None:
        query = query.filter(org_id=q.org_id)
    if q.name is not None:
        query = query.filter(name=q.name)
    now = datetime.now(UTC)
    if q.status == "revoked":
        query = query.filter(revoked_at__isnull=False)
    elif q.status == "expired":
        query = query.filter(revoked_at__isnull=True, expires_at__lte=now)
    elif q.status == "active":
        query = query.filter(Q(revoked_at__isnull=True), Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    rows, paging = await fetch_page(query, q, "created_at", "id")
    return schemas.KeyList(data=[schemas.Key.model_validate(key_out(key)) for key in rows], **paging)


async def get_key(call: Call) -> schemas.Key:
    return schemas.Key.model_validate(key_out(await visible_key(call)))


async def create_key(call: Call) -> schemas.CreatedKey:
    body: schemas.KeyCreate = call.body
    caller = call.user
    owner = None
    if body.user_id is not None:
        owner = await models.User.get_or_none(id=body.user_id)
        owner_org = uuid.UUID(str(owner.org_id)) if owner is not None and owner.org_id else None  # type: ignore[attr-defined]
        if owner is None or not await caller.may_act_in(owner_org):
            if caller.scoped:
                raise forbidden("The key's user is outside your organization.", param="user_id")
            raise unprocessable("No user has the id given as user_id.", param="user_id")
    org_id = body.org_id
    if org_id is not None:
        await caller.require_org(org_id, "org_id")
        if not await models.Organization.exists(id=org_id):
            raise unprocessable("No organization has the id given as org_id.", param="org_id")
    elif owner is None and caller.scoped:
        org_id = caller.org_id  # a scoped user's keys belong to their organization by default
    if body.expires_at is not None and _utc(body.expires_at) <= datetime.now(UTC):
        raise unprocessable("expires_at is in the past.", param="expires_at")
    metadata = dlp.stored_metadata(call, body)
    record, secret = await keys.create_key(
        body.name,
        user=owner,
        org=org_id,
        models=body.models,
        expires_at=body.expires_at,
        scopes=body.scopes,
        metadata=metadata,
        rpm_limit=body.rpm_limit,
        tpm_limit=body.tpm_limit,
        max_parallel=body.max_parallel,
        budget_limit=schemas.to_decimal(body.budget_limit),
        budget_period=body.budget_period,
    )
    return schemas.CreatedKey.model_validate({**key_out(record), "secret": secret})


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


async def update_key(call: Call) -> schemas.Key:
    body: schemas.KeyUpdate = call.body
    key = await visible_key(call)
    changes = body.model_dump(exclude_unset=True)
    if "models" in changes:
        changes["allowed_models"] = changes.pop("models")
    if "metadata" in changes or "dlp" in changes:
        changes.pop("dlp", None)
        changes["metadata"] = dlp.stored_metadata(call, body, key.metadata)
    if "budget_limit" in changes:
        changes["budget_limit"] = schemas.to_decimal(body.budget_limit)
    if changes.get("expires_at") is not None:
        changes["expires_at"] = _utc(changes["expires_at"])
    key.update_from_dict(changes)
    await key.save()
    await call.keys_changed(key_id=key.id)
    return schemas.Key.model_validate(key_out(key))


async def revoke_key(call: Call) -> schemas.Key:
    key = await visible_key(call)
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        await key.save(update_fields=["revoked_at", "updated_at"])
    await call.keys_changed(key_id=key.id)  # on lockgate:keys: every gateway drops it at once
    return schemas.Key.model_validate(key_out(key))


async def delete_key(call: Call) -> None:
    key = await visible_key(call)
    await key.delete()
    await call.keys_changed(key_id=key.id)


OPERATIONS = [
    Operation(
        "GET", "/keys", list_keys, "List API keys", "keys", query=schemas.KeyQuery, response=schemas.KeyList
    ),
    Operation(
        "POST",
        "/keys",
        create_key,
        "Create an API key",
        "keys",
        role=Role.WRITE,
        body=schemas.KeyCreate,
        response=schemas.CreatedKey,
        status=201,
        description="The answer holds the key itself in `secret`: it is shown this once and never again.",
    ),
    Operation("GET", "/keys/{id}", get_key, "Get an API key", "keys", response=schemas.Key, errors=(404,)),
    Operation(
        "PATCH",
        "/keys/{id}",
        update_key,
        "Update an API key",
        "keys",
        role=Role.WRITE,
        body=schemas.KeyUpdate,
        response=schemas.Key,
        description="Change the name, allowed models, expiry, metadata, DLP override, limits or budget.",
        errors=(404,),
    ),
    Operation(
        "POST",
        "/keys/{id}/revoke",
        revoke_key,
        "Revoke an API key",
        "keys",
        role=Role.WRITE,
        response=schemas.Key,
        description="The key stops working on every gateway at once. Revoking again changes nothing.",
        errors=(404,),
    ),
    Operation(
        "DELETE",
        "/keys/{id}",
        delete_key,
        "Delete an API key",
        "keys",
        role=Role.WRITE,
        status=204,
        errors=(404,),
    ),
]
