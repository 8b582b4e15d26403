"""Smooth weighted round robin (nginx's algorithm): each deployment in proportion to its ``weight``,
interleaved rather than in bursts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway_core import Balancer, Deployment, RequestContext, hookimpl


class Weighted(Balancer):
    name = "weighted"

    def __init__(self, group: str, deployments: Sequence[Deployment]) -> None:
        super().__init__(group, deployments)
        self._weights = [deployment.weight for deployment in self.deployments]
        self._total = sum(self._weights)
        self._current = [0.0] * len(self.deployments)

    def choose(self, ctx: RequestContext) -> Deployment:
        current = self._current
        best = 0
        for index, weight in enumerate(self._weights):
            current[index] += weight
            if current[index] > current[best]:
                best = index
        current[best] -= self._total
        return self.deployments[best]


@hookimpl
def lockgate_register_balancers(register: Callable[[str, type[Balancer]], None]) -> None:
    register("weighted", Weighted)
