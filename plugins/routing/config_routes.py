"""Routes model names to model groups: names and aliases first, then the routing rules.

Names and aliases are those of the configuration and of the deployments managed in the database;
routing rules (database, exact names or globs, by priority) are tried only when neither matches.
It answers last (``trylast``), so a routing plugin can take precedence and fall back to it.
"""

from __future__ import annotations

from gateway_core import ModelGroup, RequestContext, hookimpl


@hookimpl(trylast=True)
def lockgate_route(ctx: RequestContext, model: str) -> ModelGroup | None:
    gateway = ctx.gateway
    group = gateway.models.get(model)
    if group is None:
        group = gateway.routing_rules.match(model)
    return group
