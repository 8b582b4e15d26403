"""Routes model names to the model groups of the configuration (names and aliases).

It answers last (``trylast``), so a routing plugin can take precedence and fall back to it.
"""

from __future__ import annotations

from gateway_core import ModelGroup, RequestContext, hookimpl


@hookimpl(trylast=True)
def lockgate_route(ctx: RequestContext, model: str) -> ModelGroup | None:
    return ctx.gateway.models.get(model)
