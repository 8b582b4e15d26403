"""Routes model names to model groups: names and aliases, then ``provider/model`` ids, then rules.

Names and aliases are those of the configuration and of the deployments managed in the database.
``provider/model`` ids are served by the ``providers`` section (a group built on first use, for the
upstream models its ``models`` globs allow). Routing rules (the database's by priority, then the
configuration's ``routing.rules`` in order) are tried last. It answers last (``trylast``), so a
routing plugin can take precedence and fall back to it.
"""

from __future__ import annotations

from gateway_core import ModelGroup, RequestContext, hookimpl


@hookimpl(trylast=True)
def lockgate_route(ctx: RequestContext, model: str) -> ModelGroup | None:
    gateway = ctx.gateway
    group = gateway.models.get(model)
    if group is None:
        group = gateway.provider_routes.match(model) or gateway.routing_rules.match(model)
    return group
