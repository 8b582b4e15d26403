"""Smooth weighted round robin (nginx's algorithm): each deployment in proportion to its ``weight``,
interleaved rather than in bursts (those at their rate limit skipped)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway_core import Balancer, Deployment, RequestContext, hookimpl
from gateway_core.routing import unlimited


class Weighted(Balancer):
    name = "weighted"

    def __init__(self, group: str, deployments: Sequence[Deployment]) -> None:
        super().__init__(group, deployments)
        self._weights = [deployment.weight for deployment in self.deployments]
        self._total = sum(self._weights)
        self._current = [0.0] * len(self.deployments)
        self._index = {id(deployment): index for index, deployment in enumerate(self.deployments)}

    def choose(self, ctx: RequestContext, candidates: Sequence[Deployment]) -> Deployment:
        candidates = unlimited(candidates)
        current = self._current
        weights = self._weights
        if candidates is self.deployments:
            best = 0
            for index, weight in enumerate(weights):
                current[index] += weight
                if current[index] > current[best]:
                    best = index
            current[best] -= self._total
            return self.deployments[best]
        # Some are out: the same algorithm over the others, so their shares keep their proportions.
        indices = [self._index[id(deployment)] for deployment in candidates]
        best = indices[0]
        total = 0.0
        for index in indices:
            current[index] += weights[index]
            total += weights[index]
            if current[index] > current[best]:
                best = index
        current[best] -= total
        return self.deployments[best]


@hookimpl
def lockgate_register_balancers(register: Callable[[str, type[Balancer]], None]) -> None:
    register("weighted", Weighted)
