"""Least connections: the deployment with the fewest calls in flight in this worker (ties go to the
one chosen least recently, so idle deployments share the load)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway_core import Balancer, Deployment, RequestContext, hookimpl


class LeastConnections(Balancer):
    name = "least_connections"

    def __init__(self, group: str, deployments: Sequence[Deployment]) -> None:
        super().__init__(group, deployments)
        self._turn = 0

    def choose(self, ctx: RequestContext, candidates: Sequence[Deployment]) -> Deployment:
        deployments = candidates
        count = len(deployments)
        self._turn = (self._turn + 1) % count
        best = deployments[self._turn]
        for offset in range(1, count):
            candidate = deployments[(self._turn + offset) % count]
            if candidate.in_flight < best.in_flight:
                best = candidate
        return best


@hookimpl
def lockgate_register_balancers(register: Callable[[str, type[Balancer]], None]) -> None:
    register("least_connections", LeastConnections)
