"""Rate limits: requests per minute, tokens per minute and requests in parallel.

Scopes, each with its own counters, all of which a request must pass:

* the API key: its own limits (``rpm``, ``tpm``, ``max_parallel`` from the key's record or its
  configuration entry), else the plugin's ``defaults``;
* its user and its organization: ``metadata.limits`` of the user and organization records;
* the model: ``models`` in the plugin's options, patterns matched against the model group (and the
  name the client asked for); one counter per model group, shared by all callers.

A request reserves one request and its worst case in tokens (the estimated prompt plus its
``max_tokens``, or the pricing default) before the call; once it ended the token reservation is
corrected to the real usage. A request that never reached a provider gives everything back. Counters
are GCRA windows (:mod:`gateway_core.limits.windows`), global with Redis.

Answers carry OpenAI's ``x-ratelimit-*`` headers of the tightest scope; refusals are 429 with
``Retry-After``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway_core import Gateway, GatewayError, Principal, RequestContext, hookimpl
from gateway_core.limits import Reservation, Verdict, Window, format_duration, tokens_used
from gateway_core.limits.outcome import reached_provider
from gateway_core.pricing import estimate_prompt_tokens, max_output_tokens

NAME = "rate_limits"

#: Length of the rate windows: limits are per minute.
WINDOW_SECONDS = 60
REQUESTS = "requests"
TOKENS = "tokens"
PARALLEL = "parallel"
_UNITS = {REQUESTS: "requests per min (RPM)", TOKENS: "tokens per min (TPM)"}
#: Most principals whose scopes are remembered (they are rebuilt on a miss).
MAX_CACHED = 10_000


class Limits(BaseModel):
    """Limits of one scope; an unset limit does not apply, 0 refuses everything."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=0, description="requests per minute")
    tpm: int | None = Field(None, ge=0, description="tokens per minute (prompt + completion)")
    max_parallel: int | None = Field(None, ge=0, description="requests in flight at once")

    def merged(self, values: Mapping[str, Any] | None) -> Limits:
        """These limits with the ones set in ``values`` (a record's) taking precedence."""
        if not values:
            return self
        given = {name: values.get(name) for name in ("rpm", "tpm", "max_parallel")}
        return self.model_copy(update={k: int(v) for k, v in given.items() if isinstance(v, int | float)})

    @property
    def empty(self) -> bool:
        return self.rpm is None and self.tpm is None and self.max_parallel is None


class RateLimitsOptions(BaseModel):
    """Options under ``plugins.rate_limits``."""

    model_config = ConfigDict(extra="forbid")

    defaults: Limits = Field(default_factory=Limits, description="per key, for keys that set none")
    models: dict[str, Limits] = Field(
        default_factory=dict,
        description="per model group, all callers together; keys are model names or globs",
    )
    lease_seconds: float = Field(
        900.0, gt=0, description="a parallel slot not released by then frees itself (crashed worker)"
    )


@dataclass(frozen=True, slots=True)
class Scope:
    """One set of counters a request is checked against."""

    key: str
    label: str
    limits: Limits

    def windows(self, tokens: int) -> list[Window]:
        windows = []
        if self.limits.rpm is not None:
            windows.append(Window(REQUESTS, self.limits.rpm, WINDOW_SECONDS, 1))
        if self.limits.tpm is not None:
            windows.append(Window(TOKENS, self.limits.tpm, WINDOW_SECONDS, tokens))
        return windows


@dataclass(slots=True)
class Held:
    """What one request holds until it is settled."""

    reservation: Reservation
    tokens: int


class RateLimits:
    """The plugin's state in one gateway."""

    def __init__(self, gateway: Gateway, options: RateLimitsOptions) -> None:
        self.gateway = gateway
        self.options = options
        self.counters = gateway.counters
        self.exact_models = {name: limits for name, limits in options.models.items() if not _is_glob(name)}
        self.model_globs = [(name, limits) for name, limits in options.models.items() if _is_glob(name)]
        self._callers: dict[int, tuple[Principal, list[Scope]]] = {}

    def scopes(self, ctx: RequestContext) -> list[Scope]:
        principal = ctx.principal
        scopes = self.caller_scopes(principal) if principal is not None else []
        group = ctx.group.name if ctx.group is not None else ctx.model
        model = self.model_limits(group, ctx.model)
        if model is not None:
            scopes = [*scopes, Scope(f"rl:model:{group}", f"model '{group}' (all callers)", model)]
        return scopes

    def caller_scopes(self, principal: Principal) -> list[Scope]:
        """The key, user and organization scopes of a principal (remembered per principal object:
        auth plugins cache them)."""
        cached = self._callers.get(id(principal))
        if cached is not None and cached[0] is principal:
            return cached[1]
        metadata = principal.metadata
        scopes: list[Scope] = []
        key = self.options.defaults.merged(metadata.get("limits"))
        if not key.empty:
            label = f"key '{principal.name or principal.key_id}'"
            scopes.append(Scope(f"rl:key:{principal.key_id}", label, key))
        if principal.user_id is not None:
            user = Limits().merged(metadata.get("user_limits"))
            if not user.empty:
                scopes.append(Scope(f"rl:user:{principal.user_id}", f"user '{principal.user_id}'", user))
        if principal.org_id is not None:
            org = Limits().merged(metadata.get("org_limits"))
            if not org.empty:
                name = metadata.get("org_name") or principal.org_id
                scopes.append(Scope(f"rl:org:{principal.org_id}", f"organization '{name}'", org))
        if len(self._callers) >= MAX_CACHED:
            self._callers.clear()
        self._callers[id(principal)] = (principal, scopes)
        return scopes

    def model_limits(self, group: str, requested: str) -> Limits | None:
        found = self.exact_models.get(group) or self.exact_models.get(requested)
        if found is not None:
            return found
        for pattern, limits in self.model_globs:
            if fnmatch.fnmatchcase(group, pattern) or fnmatch.fnmatchcase(requested, pattern):
                return limits
        return None

    def check(self, ctx: RequestContext) -> Awaitable[None] | None:
        """The check of a request, or None when no limit applies (nothing to await). The take starts
        now, so it shares its Redis round trip with the other policies' (see ``Reservation.take_soon``)."""
        scopes = self.scopes(ctx)
        if not scopes:
            return None
        default_output = self.gateway.config.pricing.default_max_output_tokens
        tokens = estimate_prompt_tokens(ctx.body) + max_output_tokens(ctx.body, default_output)
        held = Held(Reservation(self.counters), tokens)
        ctx.state[NAME] = held  # before taking: a request cancelled meanwhile is settled from here
        taking = held.reservation.take_soon([(scope.key, scope.windows(tokens)) for scope in scopes])
        return self._checked(ctx, held, taking, scopes)

    async def _checked(
        self, ctx: RequestContext, held: Held, taking: Awaitable[None], scopes: list[Scope]
    ) -> None:
        await taking
        refusal = held.reservation.refusal
        if refusal is not None:
            ctx.response_headers.update(rate_headers([refusal]))
            label = next(scope.label for scope in scopes if scope.key == refusal.scope)
            raise rate_limited(refusal, label)
        for scope in scopes:
            parallel = scope.limits.max_parallel
            if parallel is None:
                continue
            if not await held.reservation.acquire(scope.key, PARALLEL, parallel, self.options.lease_seconds):
                await held.reservation.release()
                raise too_many_in_parallel(scope.label, parallel)
        ctx.response_headers.update(rate_headers(held.reservation.verdicts))

    def settle(self, ctx: RequestContext) -> Awaitable[None] | None:
        """Correct the windows to what the request used; started now, like the check."""
        held: Held | None = ctx.state.get(NAME)
        if held is None:
            return None
        requests = 1 if reached_provider(ctx) else 0
        tokens = tokens_used(ctx, held.tokens)
        return held.reservation.settle_soon(lambda window: requests if window.name == REQUESTS else tokens)


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


# --- answers ---------------------------------------------------------------------------------------


def rate_headers(verdicts: list[Verdict]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers from the tightest scope of each kind."""
    headers: dict[str, str] = {}
    for kind in (REQUESTS, TOKENS):
        tightest: tuple[int, int, float] | None = None
        for verdict in verdicts:
            for window in verdict.windows:
                if window.name != kind:
                    continue
                numbers = (verdict.remaining[kind], window.limit, verdict.reset[kind] or 0.0)
                if tightest is None or numbers[:2] < tightest[:2]:
                    tightest = numbers
        if tightest is not None:
            remaining, limit, reset = tightest
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(reset)
    return headers


def rate_limited(verdict: Verdict, label: str) -> GatewayError:
    """429 for a refused take, in OpenAI's words."""
    window = verdict.refused
    assert window is not None
    unit = _UNITS[window.name]
    if window.limit == 0:
        return GatewayError(
            429,
            f"Rate limit reached for {label} on {unit}: Limit 0. No requests are allowed.",
            type=window.name,
            code="rate_limit_exceeded",
        )
    if not window.fits():
        return GatewayError(
            429,
            f"Request too large for {label} on {unit}: Limit {window.limit}, Requested {window.amount}. "
            "Lower max_tokens or shorten the prompt.",
            type=window.name,
            code="rate_limit_exceeded",
        )
    wait = verdict.retry_after or 0.0
    return GatewayError(
        429,
        f"Rate limit reached for {label} on {unit}: Limit {window.limit}, "
        f"Used {verdict.used[window.name]}, Requested {window.amount}. "
        f"Please try again in {format_duration(wait)}.",
        type=window.name,
        code="rate_limit_exceeded",
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )


def too_many_in_parallel(label: str, limit: int) -> GatewayError:
    return GatewayError(
        429,
        f"Concurrency limit reached for {label}: Limit {limit} requests in parallel. "
        "Please try again when one of them has finished.",
        type=REQUESTS,
        code="rate_limit_exceeded",
        headers={"Retry-After": "1"},
    )


# --- hooks -----------------------------------------------------------------------------------------


@hookimpl
def lockgate_startup(gateway: Gateway) -> None:
    gateway.plugin_state[NAME] = RateLimits(gateway, gateway.config.plugin_config(NAME, RateLimitsOptions))


@hookimpl
def lockgate_policy_check(ctx: RequestContext) -> Awaitable[None] | None:
    limits: RateLimits = ctx.gateway.plugin_state[NAME]
    return limits.check(ctx)


@hookimpl
def lockgate_policy_settle(ctx: RequestContext) -> Awaitable[None] | None:
    limits: RateLimits = ctx.gateway.plugin_state[NAME]
    return limits.settle(ctx)
