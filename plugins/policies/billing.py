"""Prepaid billing: every request is paid from the balance of its user or organization.

Off unless the configuration has a ``plugins.billing`` section (and a ``database``). Before the call
a request reserves its worst case, what its estimated prompt and its ``max_tokens`` (else
``pricing.default_max_output_tokens``) cost at the dearest price of its model group. Once it ended it
is charged its real cost and the rest of the reservation is refunded; every charge is a billing
record. A model group with an unknown price reserves nothing and its calls are charged nothing: they
are recorded with an amount of 0 and the note "price unknown".

Who pays (``charge``): ``user``, ``org``, or ``both``: the organization when its balance can take the
request, else the user. A request is always charged to one balance, the one that took its reservation.

With ``allow_negative: false`` a balance that cannot cover the worst case is refused with 402
``insufficient_balance``; with ``true`` a request passes while the balance is above zero and may take
it below. Callers with no balance at all are refused (``require_balance: true``) or free.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Sequence
from decimal import ROUND_UP, Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway_core import ConfigError, Gateway, GatewayError, Principal, RequestContext, hookimpl
from gateway_core.billing import (
    QUEUE_SIZE,
    Ledger,
    LedgerUnavailable,
    Owner,
    Reservation,
    ReserveStatus,
    format_usd,
    from_units,
    ledger_of,
    to_units,
)
from gateway_core.pricing import estimate_prompt_tokens, max_output_tokens
from gateway_core.store.models import OwnerType

NAME = "billing"
log = logging.getLogger("lockgate.policies.billing")

PRICE_UNKNOWN = "price unknown"


class BillingOptions(BaseModel):
    """Options under ``plugins.billing``."""

    model_config = ConfigDict(extra="forbid")

    allow_negative: bool = Field(
        False, description="let a request through while the balance is above zero, even if it cannot cover it"
    )
    charge: Literal["user", "org", "both"] = Field(
        "both",
        description="whose balance pays: the user's, the organization's, or the organization's then the user's",
    )
    require_balance: bool = Field(True, description="refuse callers who have no balance (else they are free)")
    flush_seconds: float = Field(
        1.0, gt=0, le=3600, description="how often charges are written to the database"
    )
    batch_size: int = Field(
        500, ge=1, le=10_000, description="most billing records written in one transaction"
    )
    queue_size: int = Field(
        QUEUE_SIZE,
        ge=1,
        description="billing records held in memory while the database cannot take them; beyond, they "
        "go to the spool",
    )
    spool_dir: str = Field(
        "var/billing-spool",
        description="folder of the spool files (JSON lines) of billing records the database could not "
        "take; relative to the config file's folder",
    )

    def resolved_spool_dir(self, base: Path) -> Path:
        """The spool folder, a relative path resolved against ``base`` (the config file's folder)."""
        path = Path(os.path.expanduser(self.spool_dir))
        return path if path.is_absolute() else (base / path).resolve()


# --- answers ----------------------------------------------------------------------------------------


def insufficient_balance(
    short: Sequence[tuple[Owner, Decimal]], worst: Decimal, covering: bool
) -> GatewayError:
    balances = " and of ".join(f"{owner} is {format_usd(balance)}" for owner, balance in short)
    if covering:
        detail = (
            f"the balance of {balances}, and this request may cost up to {format_usd(worst)}. "
            "Top up the balance, or ask for fewer output tokens (max_tokens)."
        )
    else:
        detail = f"the balance of {balances}. Top up the balance to continue."
    return GatewayError(
        402, f"Insufficient balance: {detail}", type="insufficient_quota", code="insufficient_balance"
    )


def no_balance(payers: Sequence[Owner]) -> GatewayError:
    who = " or ".join(str(owner) for owner in payers) or "this API key's user or organization"
    return GatewayError(
        402,
        f"Insufficient balance: there is no prepaid balance for {who}. Ask an administrator for a top-up.",
        type="insufficient_quota",
        code="insufficient_balance",
    )


def billing_unavailable() -> GatewayError:
    return GatewayError(
        503,
        "Balances cannot be checked right now: their store is unreachable. Retry shortly.",
        type="server_error",
        code="billing_unavailable",
        headers={"Retry-After": "2"},
    )


# --- the policy -----------------------------------------------------------------------------------------


class Billing:
    """Reserves before the call and charges after it, for one gateway."""

    def __init__(self, gateway: Gateway, options: BillingOptions, ledger: Ledger) -> None:
        self.gateway = gateway
        self.options = options
        self.ledger = ledger
        self.default_max_output = gateway.config.pricing.default_max_output_tokens

    def payers(self, principal: Principal) -> list[Owner]:
        """The balances that may pay for ``principal``'s requests, in the order they are tried."""
        charge = self.options.charge
        payers = []
        if charge != "user" and principal.org_id:
            payers.append(Owner(OwnerType.ORG, principal.org_id))
        if charge != "org" and principal.user_id:
            payers.append(Owner(OwnerType.USER, principal.user_id))
        return payers

    def worst_case(self, ctx: RequestContext) -> Decimal:
        """The most the request can cost at the dearest price of its group; 0 when a price is unknown."""
        price = self.gateway.pricing.max_price(ctx.group) if ctx.group is not None else None
        if price is None:
            return Decimal(0)
        return price.worst_case(
            estimate_prompt_tokens(ctx.body), max_output_tokens(ctx.body, self.default_max_output)
        )

    async def check(self, ctx: RequestContext) -> None:
        principal = ctx.principal
        if principal is None or ctx.endpoint == "count_tokens":
            return
        payers = self.payers(principal)
        worst = self.worst_case(ctx)
        units = to_units(worst, ROUND_UP)
        allow_negative = self.options.allow_negative
        short: list[tuple[Owner, Decimal]] = []
        for owner in payers:
            try:
                outcome = await self.ledger.reserve(owner, units, allow_negative)
            except LedgerUnavailable as exc:
                log.warning("request %s refused: %s", ctx.request_id, exc)
                raise billing_unavailable() from None
            if isinstance(outcome, Reservation):
                ctx.state[NAME] = outcome
                return
            if outcome.status is ReserveStatus.SHORT:
                short.append((owner, from_units(outcome.balance)))
        if short:
            raise insufficient_balance(short, worst, covering=not allow_negative and units > 0)
        if self.options.require_balance:
            raise no_balance(payers)

    async def settle(self, ctx: RequestContext) -> None:
        reservation: Reservation | None = ctx.state.get(NAME)
        if reservation is None:
            return
        usage = ctx.usage
        if usage is None or not (usage.prompt_tokens or usage.completion_tokens):
            await self.ledger.settle(reservation, 0, request_id=ctx.request_id, note="", record=False)
            return
        cost = ctx.cost if ctx.price_known else None
        if cost is None and ctx.price_known and ctx.deployment is not None:
            cost = self.gateway.pricing.cost(ctx.deployment, usage)
        served = f"{ctx.model} ({ctx.deployment.id})" if ctx.deployment is not None else ctx.model
        note = f"{served}: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"
        if cost is None:
            note = f"{PRICE_UNKNOWN}: {note}"
        units = 0 if cost is None else to_units(cost)
        await self.ledger.settle(reservation, units, request_id=ctx.request_id, note=note, record=True)


# --- hooks ---------------------------------------------------------------------------------------------


@hookimpl
async def lockgate_startup(gateway: Gateway) -> None:
    if NAME not in gateway.config.plugins:
        log.debug("billing is off: the configuration has no plugins.billing section")
        return
    options = gateway.config.plugin_config(NAME, BillingOptions)
    ledger = ledger_of(gateway)
    if ledger is None:
        raise ConfigError(
            f"{gateway.config.source}: plugins.billing needs a `database` section: balances and "
            "billing records are kept there"
        )
    await ledger.start(
        interval=options.flush_seconds,
        batch_size=options.batch_size,
        spool_dir=options.resolved_spool_dir(gateway.config.base_dir),
        queue_size=options.queue_size,
    )
    gateway.plugin_state[NAME] = Billing(gateway, options, ledger)


@hookimpl
async def lockgate_shutdown(gateway: Gateway) -> None:
    billing: Billing | None = gateway.plugin_state.pop(NAME, None)
    if billing is not None:
        await billing.ledger.close()


@hookimpl
def lockgate_policy_check(ctx: RequestContext) -> Awaitable[None] | None:
    billing: Billing | None = ctx.gateway.plugin_state.get(NAME)
    return None if billing is None else billing.check(ctx)


@hookimpl
def lockgate_policy_settle(ctx: RequestContext) -> Awaitable[None] | None:
    billing: Billing | None = ctx.gateway.plugin_state.get(NAME)
    return None if billing is None else billing.settle(ctx)
