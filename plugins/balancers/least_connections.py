"""Least connections: the deployment with the fewest calls in flight (ties go to the one chosen least
recently, so idle deployments share the load).

With Redis, the calls in flight in the other workers and replicas count too (as of the last sync,
:mod:`gateway_core.balancer_sync`); without it, this worker's alone. Deployments at their rate limit
are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from gateway_core import Balancer, Deployment, RequestContext, hookimpl
from gateway_core.routing import unlimited


class LeastConnections(Balancer):
    name = "least_connections"
    #: Uses the in-flight counts of every replica when Redis shares them.
    shares_state: ClassVar[bool] = True

    def __init__(self, group: str, deployments: Sequence[Deployment]) -> None:
        super().__init__(group, deployments)
        self._turn = 0

    def choose(self, ctx: RequestContext, candidates: Sequence[Deployment]) -> Deployment:
        deployments = unlimited(candidates)
        count = len(deployments)
        self._turn = (self._turn + 1) % count
        best = deployments[self._turn]
        least = best.in_flight + best.peer_in_flight
        for offset in range(1, count):
            candidate = deployments[(self._turn + offset) % count]
            load = candidate.in_flight + candidate.peer_in_flight
            if load < least:
                best, least = candidate, load
        return best


@hookimpl
def lockgate_register_balancers(register: Callable[[str, type[Balancer]], None]) -> None:
    register("least_connections", LeastConnections)
