"""Lowest cost: the deployment whose estimated cost for this request is the lowest.

The estimate is the deployment's price (``gateway.pricing``) applied to the request's estimated
prompt tokens and its most output tokens (``max_completion_tokens``/``max_tokens``, else
``pricing.default_max_output_tokens``). Equally cheap deployments take turns; deployments whose price
is unknown come last (in turn among themselves); deployments at their rate limit are skipped unless
all are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from gateway_core import Balancer, Deployment, RequestContext, hookimpl
from gateway_core.pricing import estimate_prompt_tokens, max_output_tokens
from gateway_core.routing import unlimited


class LowestCost(Balancer):
    name = "lowest_cost"

    def __init__(self, group: str, deployments: Sequence[Deployment]) -> None:
        super().__init__(group, deployments)
        self._turn = -1

    def choose(self, ctx: RequestContext, candidates: Sequence[Deployment]) -> Deployment:
        candidates = unlimited(candidates)
        if len(candidates) == 1:
            return candidates[0]
        gateway = ctx.gateway
        body = ctx.body
        prompt = estimate_prompt_tokens(body)
        output = max_output_tokens(body, gateway.config.pricing.default_max_output_tokens)
        cheapest: list[Deployment] = []
        lowest: Decimal | None = None
        for deployment in candidates:
            price = gateway.pricing.price_of(deployment)
            if price is None:
                continue
            cost = price.input * prompt + price.output * output
            if lowest is None or cost < lowest:
                cheapest, lowest = [deployment], cost
            elif cost == lowest:
                cheapest.append(deployment)
        pool = cheapest or candidates  # no price known: every one in turn
        self._turn += 1
        return pool[self._turn % len(pool)]


@hookimpl
def lockgate_register_balancers(register: Callable[[str, type[Balancer]], None]) -> None:
    register("lowest_cost", LowestCost)
