"""Lowest latency: the deployment with the smallest moving average (EWMA) of its time to first byte.

Every successful call updates its deployment's average (the whole call when nothing was streamed).
With Redis, the averages of the other workers and replicas are blended in (as of the last sync,
:mod:`gateway_core.balancer_sync`); without it, this worker's alone. Deployments without a
measurement yet are tried first, so every one gets measured; a small share of requests
(``EXPLORE_EVERY``) still goes to the others in turn, so a deployment that became faster is noticed.
Deployments at their rate limit are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from gateway_core import Balancer, Deployment, RequestContext, hookimpl
from gateway_core.routing import unlimited

#: Weight of the newest measurement in the moving average.
ALPHA = 0.3
#: One request in this many explores a deployment other than the fastest.
EXPLORE_EVERY = 20


class LowestLatency(Balancer):
    name = "lowest_latency"
    #: Uses the latency averages of every replica when Redis shares them.
    shares_state: ClassVar[bool] = True

    def __init__(self, group: str, deployments: Sequence[Deployment]) -> None:
        super().__init__(group, deployments)
        self._count = 0

    def choose(self, ctx: RequestContext, candidates: Sequence[Deployment]) -> Deployment:
        deployments = unlimited(candidates)
        averages: list[float] = []
        for deployment in deployments:
            average = deployment.shared_latency()
            if average is None:
                return deployment
            averages.append(average)
        self._count += 1
        if len(deployments) > 1 and self._count % EXPLORE_EVERY == 0:
            return deployments[(self._count // EXPLORE_EVERY) % len(deployments)]
        return deployments[averages.index(min(averages))]

    def release(self, deployment: Deployment, ctx: RequestContext) -> None:
        if ctx.status != 200:
            return
        end = ctx.first_byte if ctx.first_byte is not None else ctx.finished
        if end is None:
            return
        latency = end - ctx.started
        previous = deployment.latency
        deployment.latency = latency if previous is None else ALPHA * latency + (1 - ALPHA) * previous

    def average(self, deployment: Deployment) -> float | None:
        """The current moving average of ``deployment`` in seconds, every replica's blended in (None
        before its first call)."""
        return deployment.shared_latency()


@hookimpl
def lockgate_register_balancers(register: Callable[[str, type[Balancer]], None]) -> None:
    register("lowest_latency", LowestLatency)
