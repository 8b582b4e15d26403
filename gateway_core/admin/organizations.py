"""``/admin/api/organizations``: the organization tree.

Users bound to an organization see it and its descendants. Organization-bound admins manage the
descendants (create, rename, move within their tree, delete) but not their own organization, which
only an admin not bound to any organization may change: otherwise they could raise their own budget
or move their tree under another one.
"""

from __future__ import annotations

import uuid

from tortoise.exceptions import IntegrityError

from gateway_core.admin import dlp, schemas
from gateway_core.admin.api import (
    Call,
    Operation,
    conflict,
    fetch_page,
    forbidden,
    not_found,
    org_parents,
    unprocessable,
)
from gateway_core.store import models
from gateway_core.store.models import Role


def org_out(org: models.Organization) -> schemas.Organization:
    metadata, override = dlp.shown(org.metadata)
    return schemas.Organization(
        id=org.id,
        name=org.name,
        parent_id=org.parent_id,  # type: ignore[attr-defined]
        metadata=metadata,
        dlp=override,
        budget_limit=float(org.budget_limit) if org.budget_limit is not None else None,
        budget_period=org.budget_period,
        created_at=org.created_at,
        updated_at=org.updated_at,
    )


async def visible_org(call: Call) -> models.Organization:
    """The organization of the path, if the caller may see it (404 otherwise)."""
    org_id = call.path_id()
    if not await call.user.may_act_in(org_id):
        raise not_found("organization")
    org = await models.Organization.get_or_none(id=org_id)
    if org is None:
        raise not_found("organization")
    return org


async def _check_parent(call: Call, parent_id: uuid.UUID | None) -> None:
    """A parent the caller may place organizations under, and that exists."""
    caller = call.user
    if parent_id is None:
        if caller.scoped:
            raise forbidden(
                "You can create organizations only under your own organization or its descendants.",
                param="parent_id",
            )
        return
    await caller.require_org(parent_id, "parent_id")
    if not await models.Organization.exists(id=parent_id):
        raise unprocessable("No organization has the id given as parent_id.", param="parent_id")


def _duplicate(name: str) -> Exception:
    return conflict(f"An organization named {name!r} exists.", param="name")


async def list_organizations(call: Call) -> schemas.OrganizationList:
    q: schemas.OrganizationQuery = call.query
    query = models.Organization.all()
    orgs = await call.user.orgs()
    if orgs is not None:
        query = query.filter(id__in=list(orgs))
    if q.parent_id is not None:
        query = query.filter(parent_id=q.parent_id)
    if q.name is not None:
        query = query.filter(name=q.name)
    rows, paging = await fetch_page(query, q, "created_at", "id")
    return schemas.OrganizationList(data=[org_out(org) for org in rows], **paging)


async def get_organization(call: Call) -> schemas.Organization:
    return org_out(await visible_org(call))


async def create_organization(call: Call) -> schemas.Organization:
    body: schemas.OrganizationCreate = call.body
    await _check_parent(call, body.parent_id)
    if await models.Organization.exists(name=body.name):
        raise _duplicate(body.name)
    metadata = dlp.stored_metadata(call, body)
    try:
        org = await models.Organization.create(
            name=body.name,
            parent_id=body.parent_id,
            metadata=metadata,
            budget_limit=schemas.to_decimal(body.budget_limit),
            budget_period=body.budget_period,
        )
    except IntegrityError:
        raise _duplicate(body.name) from None
    return org_out(org)


async def update_organization(call: Call) -> schemas.Organization:
    body: schemas.OrganizationUpdate = call.body
    org = await visible_org(call)
    caller = call.user
    if caller.scoped and org.id == caller.org_id:
        raise forbidden("Your own organization can be changed only by an admin not bound to an organization.")
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and body.name != org.name and await models.Organization.exists(name=body.name):
        raise _duplicate(body.name)
    if "parent_id" in changes:
        await _check_parent(call, body.parent_id)
        if body.parent_id is not None:
            parents = await org_parents()
            ancestor: uuid.UUID | None = body.parent_id
            while ancestor is not None:
                if ancestor == org.id:
                    raise unprocessable(
                        "parent_id would put the organization under itself or one of its descendants.",
                        param="parent_id",
                    )
                ancestor = parents.get(ancestor)
    if "metadata" in changes or "dlp" in changes:
        changes.pop("dlp", None)
        changes["metadata"] = dlp.stored_metadata(call, body, org.metadata)
    if "budget_limit" in changes:
        changes["budget_limit"] = schemas.to_decimal(body.budget_limit)
    org.update_from_dict(changes)
    try:
        await org.save()
    except IntegrityError:
        raise _duplicate(str(body.name)) from None
    # Keys carry their organization's name, budget and DLP override: let every gateway reload them.
    await call.keys_changed(org_id=org.id)
    return org_out(org)


async def delete_organization(call: Call) -> None:
    org = await visible_org(call)
    caller = call.user
    if caller.scoped and org.id == caller.org_id:
        raise forbidden("Your own organization can be deleted only by an admin not bound to an organization.")
    for related, what in (
        (models.Organization.filter(parent_id=org.id), "child organizations"),
        (models.User.filter(org_id=org.id), "users"),
        (models.ApiKey.filter(org_id=org.id), "API keys"),
    ):
        if await related.exists():
            raise conflict(f"The organization still has {what}: delete or move them first.")
    await org.delete()
    await call.keys_changed(org_id=org.id)


OPERATIONS = [
    Operation(
        "GET",
        "/organizations",
        list_organizations,
        "List organizations",
        "organizations",
        query=schemas.OrganizationQuery,
        response=schemas.OrganizationList,
    ),
    Operation(
        "POST",
        "/organizations",
        create_organization,
        "Create an organization",
        "organizations",
        role=Role.ADMIN,
        body=schemas.OrganizationCreate,
        response=schemas.Organization,
        status=201,
        errors=(409,),
    ),
    Operation(
        "GET",
        "/organizations/{id}",
        get_organization,
        "Get an organization",
        "organizations",
        response=schemas.Organization,
        errors=(404,),
    ),
    Operation(
        "PATCH",
        "/organizations/{id}",
        update_organization,
        "Update an organization",
        "organizations",
        role=Role.ADMIN,
        body=schemas.OrganizationUpdate,
        response=schemas.Organization,
        description="Moving an organization under itself or one of its descendants is refused (400).",
        errors=(404, 409),
    ),
    Operation(
        "DELETE",
        "/organizations/{id}",
        delete_organization,
        "Delete an organization",
        "organizations",
        role=Role.ADMIN,
        status=204,
        description="Refused (409) while it has child organizations, users or API keys.",
        errors=(404, 409),
    ),
]
