"""What a load-balancing strategy implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from gateway_core.routing import Deployment
    from gateway_core.types import RequestContext


class Balancer:
    """Chooses one deployment of a model group per request.

    One instance is built per model group at start-up. :meth:`choose` is on the hot path: keep it
    synchronous and cheap. :meth:`release` is called when the chosen deployment's call ended.

    The pipeline hands :meth:`choose` the deployments it may use for this attempt: usually
    :attr:`deployments` itself (the same tuple object), a subset in the same order when some are
    cooling down, have an open circuit breaker or failed earlier attempts of the request.
    """

    name: ClassVar[str] = ""

    def __init__(self, group: str, deployments: Sequence[Deployment]) -> None:
        self.group = group
        self.deployments = tuple(deployments)

    def choose(self, ctx: RequestContext, candidates: Sequence[Deployment]) -> Deployment:
        """One of ``candidates`` (never empty, a subset of :attr:`deployments` in their order)."""
        raise NotImplementedError

    def release(self, deployment: Deployment, ctx: RequestContext) -> None:
        """Called once per :meth:`choose` when the call ended, successful or not."""
