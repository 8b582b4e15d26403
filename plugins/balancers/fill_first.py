"""Fill first: the first deployment (in configuration order) that is not at its rate limit.

It keeps one deployment busy until that one is limited (its credentials' or its own ``rpm``/``tpm``)
or out of the candidates (cooling down, circuit open), then spills to the next; traffic goes back to
the first as soon as it recovers. Useful to use up a prepaid or cheaper deployment before the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway_core import Balancer, Deployment, RequestContext, hookimpl


class FillFirst(Balancer):
    name = "fill_first"

    def choose(self, ctx: RequestContext, candidates: Sequence[Deployment]) -> Deployment:
        now = time.monotonic()
        for deployment in candidates:
            if deployment.limited_until <= now:
                return deployment
        # All are limited: the one free again soonest.
        return min(candidates, key=lambda deployment: deployment.limited_until)


@hookimpl
def lockgate_register_balancers(register: Callable[[str, type[Balancer]], None]) -> None:
    register("fill_first", FillFirst)
