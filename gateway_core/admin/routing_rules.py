"""``/admin/api/routing-rules``: send model names matching a pattern to a model group.

A rule's target must be a model this gateway serves (a name or an alias), so a rule never routes to
nothing. Rules change routing on every gateway: after each change this one rebuilds its models and
the change is announced on ``lockgate:deployments``.
"""

from __future__ import annotations

from gateway_core.admin import schemas
from gateway_core.admin.api import Call, Operation, fetch_page, not_found, unprocessable
from gateway_core.admin.deployments import models_changed
from gateway_core.store import models
from gateway_core.store.models import Role


def rule_out(rule: models.RoutingRule) -> schemas.RoutingRule:
    return schemas.RoutingRule.model_validate(rule, from_attributes=True)


def _check_target(call: Call, target: str) -> None:
    if target not in call.gateway.models:
        raise unprocessable(
            f"target: no model {target!r} is served; a rule must target an existing model group.",
            param="target",
        )


async def visible_rule(call: Call) -> models.RoutingRule:
    rule = await models.RoutingRule.get_or_none(id=call.path_id())
    if rule is None:
        raise not_found("routing rule")
    return rule


async def list_routing_rules(call: Call) -> schemas.RoutingRuleList:
    q: schemas.RoutingRuleQuery = call.query
    query = models.RoutingRule.all()
    if q.target is not None:
        query = query.filter(target=q.target)
    if q.enabled is not None:
        query = query.filter(enabled=q.enabled)
    rows, paging = await fetch_page(query, q, "priority", "created_at", "id")
    return schemas.RoutingRuleList(data=[rule_out(rule) for rule in rows], **paging)


async def get_routing_rule(call: Call) -> schemas.RoutingRule:
    return rule_out(await visible_rule(call))


async def create_routing_rule(call: Call) -> schemas.RoutingRule:
    body: schemas.RoutingRuleCreate = call.body
    _check_target(call, body.target)
    rule = await models.RoutingRule.create(**body.model_dump())
    await models_changed(call)
    return rule_out(rule)


async def update_routing_rule(call: Call) -> schemas.RoutingRule:
    body: schemas.RoutingRuleUpdate = call.body
    rule = await visible_rule(call)
    changes = body.model_dump(exclude_unset=True)
    if "target" in changes:
        _check_target(call, changes["target"])
    rule.update_from_dict(changes)
    await rule.save()
    await models_changed(call)
    return rule_out(rule)


async def delete_routing_rule(call: Call) -> None:
    rule = await visible_rule(call)
    await rule.delete()
    await models_changed(call)


OPERATIONS = [
    Operation(
        "GET",
        "/routing-rules",
        list_routing_rules,
        "List routing rules",
        "routing rules",
        scoped=False,
        query=schemas.RoutingRuleQuery,
        response=schemas.RoutingRuleList,
        description="Lowest priority first.",
    ),
    Operation(
        "POST",
        "/routing-rules",
        create_routing_rule,
        "Create a routing rule",
        "routing rules",
        role=Role.WRITE,
        scoped=False,
        body=schemas.RoutingRuleCreate,
        response=schemas.RoutingRule,
        status=201,
        description="The target must be a model this gateway serves (400 otherwise).",
    ),
    Operation(
        "GET",
        "/routing-rules/{id}",
        get_routing_rule,
        "Get a routing rule",
        "routing rules",
        scoped=False,
        response=schemas.RoutingRule,
        errors=(404,),
    ),
    Operation(
        "PATCH",
        "/routing-rules/{id}",
        update_routing_rule,
        "Update a routing rule",
        "routing rules",
        role=Role.WRITE,
        scoped=False,
        body=schemas.RoutingRuleUpdate,
        response=schemas.RoutingRule,
        errors=(404,),
    ),
    Operation(
        "DELETE",
        "/routing-rules/{id}",
        delete_routing_rule,
        "Delete a routing rule",
        "routing rules",
        role=Role.WRITE,
        scoped=False,
        status=204,
        errors=(404,),
    ),
]
