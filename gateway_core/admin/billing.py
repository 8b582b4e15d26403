"""``/admin/api/balances`` and ``/admin/api/billing-records``: prepaid balances, top-ups, movements.

A balance belongs to a user or an organization, named by the id policies see: a database user's or
organization's id, or the ``user``/``org`` of a ``config_keys`` key. A top-up is written to the
database (a billing record naming the admin user who made it) and then added to the live balance
that requests are checked against, so requests in flight keep their reservations. Amounts are USD
as decimal strings. Organization-bound users see and top up the balances of their organization tree
only (its organizations and their users).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from tortoise.expressions import Q

from gateway_core.admin import schemas
from gateway_core.admin.api import Call, Operation, fetch_page, not_found
from gateway_core.admin.fields import NONBLANK, PositiveAmount, Timestamp
from gateway_core.admin.schemas import PlainDecimal
from gateway_core.billing import Ledger, Owner, ledger_of
from gateway_core.errors import GatewayError, bad_request
from gateway_core.store import models
from gateway_core.store.models import BillingKind, OwnerType, Role

_OwnerId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, pattern=NONBLANK, max_length=200)
]


# --- bodies -------------------------------------------------------------------------------------------


class Balance(BaseModel):
    """A prepaid balance (USD)."""

    owner_type: OwnerType
    owner_id: str
    amount: PlainDecimal = Field(
        description="what the next request is checked against: the live balance, in which requests in "
        "flight hold their reservations; the stored amount when no gateway has loaded it"
    )
    stored_amount: PlainDecimal = Field(
        description="what the database holds; charges reach it in batches, within seconds"
    )
    updated_at: datetime


class BalanceList(schemas.Page[Balance]):
    pass


class BalanceQuery(schemas.PageQuery):
    owner_type: OwnerType | None = None
    owner_id: _OwnerId | None = None


class TopUpCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: PositiveAmount = Field(description="USD to add")
    note: Annotated[str, StringConstraints(max_length=1000)] = Field("", description="why, for the records")


class BillingRecord(BaseModel):
    """One movement of a balance: a top-up (positive) or a charge (negative), in USD."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    owner_type: OwnerType
    owner_id: str
    kind: BillingKind
    amount: PlainDecimal
    balance_after: PlainDecimal | None = Field(
        description="the stored balance once this movement was written"
    )
    request_id: str | None = Field(description="the request charged (its x-request-id)")
    note: str
    actor: str | None = Field(description="the id of the admin user who made a top-up; null for charges")
    event_id: str | None = Field(
        description="the movement's unique id: a charge written or replayed twice is stored once under it "
        "(null for records older than it)"
    )


class BillingRecordList(schemas.Page[BillingRecord]):
    pass


class BillingRecordQuery(schemas.PageQuery):
    owner_type: OwnerType | None = None
    owner_id: _OwnerId | None = None
    kind: BillingKind | None = None
    request_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    from_: Timestamp | None = Field(None, alias="from", description="records made at or after")
    to: Timestamp | None = Field(None, description="records made before")
    order: Literal["asc", "desc"] = Field("asc", description="oldest (asc) or newest (desc) first")


class TopUp(BaseModel):
    balance: Balance
    record: BillingRecord


# --- owners ---------------------------------------------------------------------------------------------


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _owner_id(value: str) -> str:
    """An owner id as policies see it: UUIDs in their canonical form, other ids as they are."""
    value = value.strip()
    parsed = _as_uuid(value)
    return str(parsed) if parsed is not None else value


def path_owner(call: Call) -> Owner:
    params = call.request.path_params
    try:
        owner_type = OwnerType(params["owner_type"])
    except ValueError:
        raise GatewayError(
            404, "No such owner type: balances belong to a `user` or an `org`.", code="not_found"
        ) from None
    owner_id = _owner_id(params["owner_id"])
    if not owner_id or len(owner_id) > 200:
        raise not_found("balance")
    return Owner(owner_type, owner_id)


async def visible_owners(call: Call) -> Q | None:
    """A filter on ``owner_type``/``owner_id`` for what the caller may see; None: everything."""
    orgs = await call.user.orgs()
    if orgs is None:
        return None
    org_ids = [str(org) for org in orgs]
    user_ids = [
        str(user) for user in await models.User.filter(org_id__in=list(orgs)).values_list("id", flat=True)
    ]
    return Q(owner_type=OwnerType.ORG, owner_id__in=org_ids) | Q(
        owner_type=OwnerType.USER, owner_id__in=user_ids
    )


async def may_see(call: Call, owner: Owner) -> bool:
    orgs = await call.user.orgs()
    if orgs is None:
        return True
    owner_uuid = _as_uuid(owner.id)
    if owner_uuid is None:
        return False
    if owner.type is OwnerType.ORG:
        return owner_uuid in orgs
    user = await models.User.get_or_none(id=owner_uuid)
    org_id = user.org_id if user is not None else None  # type: ignore[attr-defined]
    return org_id is not None and uuid.UUID(str(org_id)) in orgs


def _configured_owners(call: Call, owner_type: OwnerType) -> set[str]:
    """The users or organizations the ``config_keys`` keys name."""
    field = "org" if owner_type is OwnerType.ORG else "user"
    keys = call.gateway.config.plugin_options("config_keys").get("keys")
    if not isinstance(keys, list):
        return set()
    return {str(key[field]) for key in keys if isinstance(key, dict) and key.get(field)}


async def is_known(call: Call, owner: Owner) -> bool:
    """Whether ``owner`` can make requests: a database user or organization, one a configured key
    names, or one with a balance already."""
    owner_uuid = _as_uuid(owner.id)
    if owner_uuid is not None:
        table = models.Organization if owner.type is OwnerType.ORG else models.User
        if await table.exists(id=owner_uuid):
            return True
    if owner.id in _configured_owners(call, owner.type):
        return True
    return await models.Balance.exists(owner_type=owner.type, owner_id=owner.id)


def _ledger(call: Call) -> Ledger:
    ledger = ledger_of(call.gateway)
    if ledger is None:  # the admin API is disabled without a database; kept for the type checker
        raise GatewayError(503, "No database is configured.", type="server_error")
    return ledger


async def balance_out(ledger: Ledger, row: models.Balance) -> Balance:
    owner = Owner(OwnerType(row.owner_type), row.owner_id)
    live = await ledger.live(owner)
    return Balance(
        owner_type=owner.type,
        owner_id=owner.id,
        amount=row.amount if live is None else live,
        stored_amount=row.amount,
        updated_at=row.updated_at,
    )


def _moment(value: datetime | None, param: str) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise bad_request(f"{param}: out of range.", param=param) from None


# --- handlers -----------------------------------------------------------------------------------------


async def list_balances(call: Call) -> BalanceList:
    q: BalanceQuery = call.query
    query = models.Balance.all()
    scope = await visible_owners(call)
    if scope is not None:
        query = query.filter(scope)
    if q.owner_type is not None:
        query = query.filter(owner_type=q.owner_type)
    if q.owner_id is not None:
        query = query.filter(owner_id=_owner_id(q.owner_id))
    rows, paging = await fetch_page(query, q, "id")
    ledger = _ledger(call)
    data = await asyncio.gather(*(balance_out(ledger, row) for row in rows))
    return BalanceList(data=list(data), **paging)


async def get_balance(call: Call) -> Balance:
    owner = path_owner(call)
    row = None
    if await may_see(call, owner):
        row = await models.Balance.get_or_none(owner_type=owner.type, owner_id=owner.id)
    if row is None:
        raise not_found("balance")
    return await balance_out(_ledger(call), row)


async def create_top_up(call: Call) -> TopUp:
    body: TopUpCreate = call.body
    owner = path_owner(call)
    if not await may_see(call, owner) or not await is_known(call, owner):
        raise GatewayError(
            404,
            f"No {owner} is known: neither in the database nor named by a configured key.",
            code="not_found",
        )
    done = await _ledger(call).top_up(owner, body.amount, note=body.note, actor=str(call.user.id))
    row = done.balance
    balance = Balance(
        owner_type=owner.type,
        owner_id=owner.id,
        amount=row.amount if done.live is None else done.live,
        stored_amount=row.amount,
        updated_at=row.updated_at,
    )
    return TopUp(balance=balance, record=BillingRecord.model_validate(done.record, from_attributes=True))


async def list_billing_records(call: Call) -> BillingRecordList:
    q: BillingRecordQuery = call.query
    query = models.BillingRecord.all()
    scope = await visible_owners(call)
    if scope is not None:
        query = query.filter(scope)
    filters: dict[str, Any] = {
        "owner_type": q.owner_type,
        "owner_id": None if q.owner_id is None else _owner_id(q.owner_id),
        "kind": q.kind,
        "request_id": q.request_id,
        "created_at__gte": _moment(q.from_, "from"),
        "created_at__lt": _moment(q.to, "to"),
    }
    query = query.filter(**{name: value for name, value in filters.items() if value is not None})
    order = ("created_at", "id") if q.order == "asc" else ("-created_at", "-id")
    rows, paging = await fetch_page(query, q, *order)
    return BillingRecordList(
        data=[BillingRecord.model_validate(row, from_attributes=True) for row in rows], **paging
    )


# --- the operations -----------------------------------------------------------------------------------

_OWNER: dict[str, dict[str, Any]] = {
    "owner_type": {"type": "string", "enum": [OwnerType.USER.value, OwnerType.ORG.value]},
    "owner_id": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": NONBLANK},
}

OPERATIONS = [
    Operation(
        "GET",
        "/balances",
        list_balances,
        "List balances",
        "balances",
        query=BalanceQuery,
        response=BalanceList,
    ),
    Operation(
        "GET",
        "/balances/{owner_type}/{owner_id}",
        get_balance,
        "Get a balance",
        "balances",
        response=Balance,
        errors=(404,),
        path_params=_OWNER,
    ),
    Operation(
        "POST",
        "/balances/{owner_type}/{owner_id}/topups",
        create_top_up,
        "Top up a balance",
        "balances",
        role=Role.WRITE,
        body=TopUpCreate,
        response=TopUp,
        status=201,
        description="Adds to the balance (making it when the owner has none yet) and records who did it. "
        "The owner is a database user or organization, or one a configured key names (404 otherwise).",
        errors=(404,),
        path_params=_OWNER,
    ),
    Operation(
        "GET",
        "/billing-records",
        list_billing_records,
        "List billing records",
        "balances",
        query=BillingRecordQuery,
        response=BillingRecordList,
        description="Top-ups and charges; a charge of a model whose price is unknown has an amount of 0 "
        'and a note starting with "price unknown".',
    ),
]
