"""Round robin: each deployment of a group in turn (those at their rate limit skipped)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway_core import Balancer, Deployment, RequestContext, hookimpl
from gateway_core.routing import unlimited


class RoundRobin(Balancer):
    name = "round_robin"

    def __init__(self, group: str, deployments: Sequence[Deployment]) -> None:
        super().__init__(group, deployments)
        self._turn = -1

    def choose(self, ctx: RequestContext, candidates: Sequence[Deployment]) -> Deployment:
        candidates = unlimited(candidates)
        self._turn += 1
        return candidates[self._turn % len(candidates)]


@hookimpl
def lockgate_register_balancers(register: Callable[[str, type[Balancer]], None]) -> None:
    register("round_robin", RoundRobin)
