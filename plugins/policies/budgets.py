"""Quotas and budgets: requests, tokens and cost (USD) per UTC day, per UTC month or in total.

Accounts a request counts against, all of which must have room:

* the API key, its user and its organization;
* every organization above the key's, up to the root: budgets roll up the organization tree.

Their amounts come from the records (the ``budget_limit``/``budget_period`` columns are a cost
budget; ``metadata.quotas`` holds the rest, e.g. ``{"requests": {"day": 1000}, "tokens": {"month":
1000000}, "cost": {"total": 250}}``) and from the plugin's ``defaults`` for keys, users and the key's
organization (a record's own amounts win, period by period).

Before the call a request reserves its worst case: one request, the estimated prompt plus its
``max_tokens`` (else ``pricing.default_max_output_tokens``) in tokens, and what that costs at the
dearest price of its model group. Once it ended the reservation is corrected to the real usage and
cost, but never above the reservation: a request is admitted only when its worst case fits, and is
charged at most that worst case, so a budget's counter never exceeds its limit. The reservation is
enforced on the answer too: a stream ends (finish reason ``length``) at the output tokens reserved
(``ctx.output_cap``, see :mod:`gateway_core.stream_cap`), and a complete answer of an upstream that
ignored ``max_tokens`` is charged no more than reserved (its usage record keeps the true usage). A
model group with an unknown price reserves no cost (logged once per model, counted in ``unpriced``)
and its calls are charged what the pricing later knows, nothing when it never does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway_core import Gateway, GatewayError, Principal, RequestContext, hookimpl
from gateway_core.limits import Period, Reservation, Verdict, Window, reached_provider, tokens_used
from gateway_core.limits.outcome import unmeasured_keeps_reservation
from gateway_core.pricing import estimate_prompt_tokens, max_output_tokens
from gateway_core.usage.spent import Owner, Spent
from plugins.policies.budget_rebuild import Rebuilds, budgets_unavailable

NAME = "budgets"
log = logging.getLogger("lockgate.policies.budgets")

REQUESTS = "requests"
TOKENS = "tokens"
COST = "cost"
#: Counters hold cost in nano-dollars: a request's cost rounds up by at most $0.000000001, so a budget
#: counts what the usage records say. Counts are exact up to 2**53 nano-dollars ($9 million) per period.
NANO = Decimal(1_000_000_000)
#: Most principals whose accounts are remembered (they are rebuilt on a miss).
MAX_CACHED = 10_000


class Counts(BaseModel):
    """Requests or tokens per period."""

    model_config = ConfigDict(extra="forbid")

    day: int | None = Field(None, ge=0)
    month: int | None = Field(None, ge=0)
    total: int | None = Field(None, ge=0)


class Money(BaseModel):
    """USD per period."""

    model_config = ConfigDict(extra="forbid")

    day: Decimal | None = Field(None, ge=0)
    month: Decimal | None = Field(None, ge=0)
    total: Decimal | None = Field(None, ge=0)


class Quotas(BaseModel):
    """The quotas and budgets of one account."""

    model_config = ConfigDict(extra="forbid")

    requests: Counts = Field(default_factory=Counts)
    tokens: Counts = Field(default_factory=Counts)
    cost: Money = Field(default_factory=Money, description="USD")

    def merged(self, other: Quotas) -> Quotas:
        """These quotas with every amount ``other`` sets taking precedence."""
        return Quotas(
            requests=self.requests.model_copy(update=other.requests.model_dump(exclude_none=True)),
            tokens=self.tokens.model_copy(update=other.tokens.model_dump(exclude_none=True)),
            cost=self.cost.model_copy(update=other.cost.model_dump(exclude_none=True)),
        )


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: Quotas = Field(default_factory=Quotas)
    user: Quotas = Field(default_factory=Quotas)
    org: Quotas = Field(default_factory=Quotas, description="the key's organization (not its ancestors)")


class BudgetsOptions(BaseModel):
    """Options under ``plugins.budgets``."""

    model_config = ConfigDict(extra="forbid")

    defaults: Defaults = Field(default_factory=Defaults)
    rebuild_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds a request waits for its counters to be rebuilt from the usage records "
        "(after their store lost them) before it is refused with 503",
    )


@dataclass(frozen=True, slots=True)
class Account:
    """One key, user or organization a request counts against, with its amounts per period."""

    key: str
    label: str
    #: (kind, period, limit): requests and tokens as counts, cost in nano-dollars.
    limits: tuple[tuple[str, Period, int], ...]
    #: The usage record column and value of the requests that count against it.
    owner: tuple[Owner, str]
    #: Whether its counters are rebuilt from the usage records when their store lost them.
    durable: bool

    def windows(self, tokens: int, cost: int) -> list[Window]:
        amounts = {REQUESTS: 1, TOKENS: tokens, COST: cost}
        return [
            Window(f"{kind}:{period}", limit, period, amounts[kind], self.durable)
            for kind, period, limit in self.limits
        ]


def _nano(usd: Decimal) -> int:
    return int((usd * NANO).to_integral_value(rounding=ROUND_CEILING))


def _limits(quotas: Quotas) -> tuple[tuple[str, Period, int], ...]:
    found: list[tuple[str, Period, int]] = []
    for period in Period:
        for kind, counts in ((REQUESTS, quotas.requests), (TOKENS, quotas.tokens)):
            count = getattr(counts, period.value)
            if count is not None:
                found.append((kind, period, count))
        money = getattr(quotas.cost, period.value)
        if money is not None:
            found.append((COST, period, _nano(money)))
    return tuple(found)


@dataclass(slots=True)
class Held:
    """What one request reserved."""

    reservation: Reservation
    tokens: int
    cost: int


class Budgets:
    """The plugin's state in one gateway."""

    def __init__(self, gateway: Gateway, options: BudgetsOptions) -> None:
        self.gateway = gateway
        self.options = options
        self.counters = gateway.counters
        #: Requests admitted with no cost reserved because their model's price is unknown.
        self.unpriced = 0
        self._warned: set[str] = set()
        self._accounts: dict[int, tuple[Principal, list[Account]]] = {}
        #: Counters are rebuilt from the usage records, when there are records.
        self.durable = gateway.database is not None and gateway.usage_log is not None
        self.rebuilds = Rebuilds(gateway, amount_of, options.rebuild_timeout)

    # --- accounts ----------------------------------------------------------------------------------

    def accounts(self, principal: Principal) -> list[Account]:
        """The accounts of a principal (remembered per principal object: auth plugins cache them)."""
        cached = self._accounts.get(id(principal))
        if cached is not None and cached[0] is principal:
            return cached[1]
        accounts = self._build(principal)
        if len(self._accounts) >= MAX_CACHED:
            self._accounts.clear()
        self._accounts[id(principal)] = (principal, accounts)
        return accounts

    def _build(self, principal: Principal) -> list[Account]:
        metadata = principal.metadata
        given = metadata.get("budgets")
        budgets: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        defaults = self.options.defaults
        candidates: list[tuple[str, str, Quotas, tuple[Owner, str]]] = [
            (
                f"bq:key:{principal.key_id}",
                f"key '{principal.name or principal.key_id}'",
                self._quotas(defaults.key, metadata.get("quotas"), budgets.get("key"), principal.key_id),
                ("key_id", principal.key_id),
            )
        ]
        if principal.user_id is not None:
            quotas = self._quotas(
                defaults.user, metadata.get("user_quotas"), budgets.get("user"), principal.user_id
            )
            label = f"user '{principal.user_id}'"
            candidates.append((f"bq:user:{principal.user_id}", label, quotas, ("user_id", principal.user_id)))
        if principal.org_id is not None:
            quotas = self._quotas(
                defaults.org, metadata.get("org_quotas"), budgets.get("org"), principal.org_id
            )
            name = metadata.get("org_name") or principal.org_id
            label = f"organization '{name}'"
            candidates.append((f"bq:org:{principal.org_id}", label, quotas, ("org_id", principal.org_id)))
        for ancestor in metadata.get("org_ancestors") or ():
            if not isinstance(ancestor, Mapping) or not ancestor.get("id"):
                continue
            org_id = str(ancestor["id"])
            quotas = self._quotas(Quotas(), ancestor.get("quotas"), ancestor.get("budget"), org_id)
            label = f"organization '{ancestor.get('name') or org_id}'"
            candidates.append((f"bq:org:{org_id}", label, quotas, ("org_id", org_id)))
        return [
            Account(key, label, limits, owner, self.durable)
            for key, label, quotas, owner in candidates
            if (limits := _limits(quotas))
        ]

    def _quotas(self, default: Quotas, given: Any, budget: Any, owner: str) -> Quotas:
        """``default`` overridden by a record's ``metadata.quotas`` and then its budget columns."""
        quotas = default
        if given:
            try:
                quotas = quotas.merged(Quotas.model_validate(given))
            except ValidationError as exc:
                self._warn(
                    f"quotas:{owner}", "invalid quotas of %s ignored: %s", owner, exc.errors()[0]["msg"]
                )
        if isinstance(budget, Mapping) and budget.get("limit") is not None and budget.get("period"):
            try:
                period = Period(str(budget["period"]))
                cost = Money.model_validate({period.value: Decimal(str(budget["limit"]))})
            except (ValueError, ArithmeticError):  # pydantic's ValidationError is a ValueError
                self._warn(f"budget:{owner}", "invalid budget of %s ignored: %r", owner, dict(budget))
            else:
                quotas = quotas.merged(Quotas(cost=cost))
        return quotas

    def _warn(self, once: str, message: str, *args: Any) -> None:
        if once not in self._warned:
            self._warned.add(once)
            log.warning(message, *args)

    # --- requests ----------------------------------------------------------------------------------

    def worst_cost(self, ctx: RequestContext, prompt: int, output: int) -> int:
        group = ctx.group
        price = self.gateway.pricing.max_price(group) if group is not None else None
        if price is None:
            self.unpriced += 1
            name = group.name if group is not None else ctx.model
            self._warn(
                f"price:{name}", "model %r has no known price: budgets reserve no cost for its calls", name
            )
            return 0
        return _nano(price.worst_case(prompt, output))

    def check(self, ctx: RequestContext) -> Awaitable[None] | None:
        """The check of a request, or None when no quota applies (nothing to await). The take starts
        now, so it shares its Redis round trip with the other policies' (see ``Reservation.take_soon``)."""
        accounts = self.accounts(ctx.principal) if ctx.principal is not None else None
        if not accounts:
            return None
        prompt = estimate_prompt_tokens(ctx.body)
        output = max_output_tokens(ctx.body, self.gateway.config.pricing.default_max_output_tokens)
        kinds = {kind for account in accounts for kind, _, _ in account.limits}
        cost = self.worst_cost(ctx, prompt, output) if COST in kinds else 0
        if (COST in kinds or TOKENS in kinds) and ctx.endpoint == "chat":
            # The reservation holds only if the answer does: streams end at the output admitted.
            ctx.output_cap = output if ctx.output_cap is None else min(output, ctx.output_cap)
        held = Held(Reservation(self.counters), prompt + output, cost)
        ctx.state[NAME] = held  # before taking: a request cancelled meanwhile is settled from here
        requests = [(account.key, account.windows(prompt + output, cost)) for account in accounts]
        taking = held.reservation.take_soon(requests)
        return self._checked(held, taking, accounts, requests)

    async def _checked(
        self,
        held: Held,
        taking: Awaitable[None],
        accounts: list[Account],
        requests: list[tuple[str, list[Window]]],
    ) -> None:
        await taking
        reservation = held.reservation
        # A store that lost a counter answers unseeded (nothing taken): rebuild it and take again,
        # once per account at most.
        for _ in accounts:
            refusal = reservation.refusal
            if refusal is None or not refusal.unseeded:
                break
            account = next(account for account in accounts if account.key == refusal.scope)
            await self.rebuilds.rebuild(*account.owner, refusal)
            reservation.refusal = None
            await reservation.take_soon(requests)
        refusal = reservation.refusal
        if refusal is not None:
            if refusal.unseeded:
                raise budgets_unavailable()
            label = next(account.label for account in accounts if account.key == refusal.scope)
            raise exceeded(refusal, label)

    def settle(self, ctx: RequestContext) -> Awaitable[None] | None:
        """Correct the windows to what the request used and cost; started now, like the check."""
        held: Held | None = ctx.state.get(NAME)
        if held is None:
            return None
        requests = 1 if reached_provider(ctx) else 0
        # A request is charged at most what it reserved, whatever the upstream reports (an upstream
        # may ignore max_tokens): the usage record keeps the true usage and cost.
        tokens = min(tokens_used(ctx, held.tokens), held.tokens)
        cost = self.cost_of(ctx, held.cost)
        if held.cost:  # priced when admitted (an unknown price reserved nothing: charged in full)
            cost = min(cost, held.cost)
        used = {REQUESTS: requests, TOKENS: tokens, COST: cost}
        return held.reservation.settle_soon(lambda window: used[window.name.partition(":")[0]])

    def cost_of(self, ctx: RequestContext, reserved: int) -> int:
        """The nano-dollars to charge for a finished request that reserved ``reserved``."""
        if ctx.cost is not None:
            return _nano(ctx.cost)
        if ctx.usage is not None:
            if ctx.deployment is None:
                return 0
            cost = self.gateway.pricing.cost(ctx.deployment, ctx.usage)
            return 0 if cost is None else _nano(cost)
        if reached_provider(ctx) and unmeasured_keeps_reservation(ctx):
            return reserved
        return 0


def amount_of(window: Window, total: Spent) -> int:
    """What a window of a budget counts of the usage records' totals."""
    kind = window.name.partition(":")[0]
    if kind == COST:
        return _nano(total.cost)
    return total.tokens if kind == TOKENS else total.requests


# --- answers ---------------------------------------------------------------------------------------


def _usd(nano: int) -> str:
    amount = Decimal(nano) / NANO
    text = f"{amount:.6f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def _in(seconds: float) -> str:
    """A wait for people: ``3d 4h``, ``5h 3m``, ``2m 10s``, ``20s``."""
    whole = max(math.ceil(seconds), 1)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def exceeded(verdict: Verdict, label: str) -> GatewayError:
    """429 ``insufficient_quota`` naming the account, the period, the limit and when it resets."""
    window = verdict.refused
    assert window is not None
    kind, _, period = window.name.partition(":")
    used = verdict.used[window.name]
    if kind == COST:
        what = "Budget exceeded"
        numbers = f"Limit {_usd(window.limit)}, Used {_usd(used)}, this request may cost up to {_usd(window.amount)}"
        code = "budget_exceeded"
    else:
        what = "Quota exceeded"
        numbers = f"Limit {window.limit}, Used {used}, Requested {window.amount}"
        code = "quota_exceeded"
    per = "in total" if period == Period.TOTAL else f"per {period}"
    reset = verdict.reset.get(window.name)
    headers: dict[str, str] = {}
    if reset is None:
        when = "This limit does not reset."
    else:
        moment = datetime.fromtimestamp(verdict.at + reset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        when = f"It resets at {moment} (in {_in(reset)})."
        if verdict.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(verdict.retry_after)))
    return GatewayError(
        429,
        f"{what} for {label} on {kind} {per}: {numbers}. {when}",
        type="insufficient_quota",
        code=code,
        headers=headers,
    )


# --- hooks -----------------------------------------------------------------------------------------


@hookimpl
def lockgate_startup(gateway: Gateway) -> None:
    gateway.plugin_state[NAME] = Budgets(gateway, gateway.config.plugin_config(NAME, BudgetsOptions))


@hookimpl
def lockgate_policy_check(ctx: RequestContext) -> Awaitable[None] | None:
    budgets: Budgets = ctx.gateway.plugin_state[NAME]
    return budgets.check(ctx)


@hookimpl
def lockgate_policy_settle(ctx: RequestContext) -> Awaitable[None] | None:
    budgets: Budgets = ctx.gateway.plugin_state[NAME]
    return budgets.settle(ctx)
