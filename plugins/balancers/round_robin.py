"""Round robin: each deployment of a group in turn."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from gateway_core import Balancer, Deployment, RequestContext, hookimpl


class RoundRobin(Balancer):
    name = "round_robin"

    def __init__(self, group: str, deployments: Sequence[Deployment]) -> None:
        super().__init__(group, deployments)
        self._next = itertools.cycle(self.deployments).__next__

    def choose(self, ctx: RequestContext) -> Deployment:
        return self._next()


@hookimpl
def lockgate_register_balancers(register: Callable[[str, type[Balancer]], None]) -> None:
    register("round_robin", RoundRobin)
