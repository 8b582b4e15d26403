"""``/admin/api/deployments``: deployments managed at run time, beside the configuration's.

A deployment is checked exactly as start-up checks the configuration's (provider known, its options
valid, the provider built), so a bad one is a 400 naming the field and never reaches the model table.
Its upstream ``api_key`` is write-only: stored encrypted with ``secrets.key`` and answered as
``has_api_key``. After each change this gateway rebuilds its models and the change is announced on
``lockgate:deployments`` for the others.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from gateway_core.admin import schemas
from gateway_core.admin.api import Call, Operation, fetch_page, not_found
from gateway_core.errors import ConfigError, bad_request
from gateway_core.routing import build_deployment
from gateway_core.store import models
from gateway_core.store.deployments import (
    SETTINGS_KEYS,
    InvalidRecord,
    deployment_config,
    notify_deployments_changed,
)
from gateway_core.store.models import Role
from gateway_core.store.secrets import NO_KEY_MESSAGE, SecretBox

log = logging.getLogger("lockgate.admin")


def deployment_out(record: models.DeploymentRecord) -> schemas.Deployment:
    settings = record.settings or {}
    return schemas.Deployment(
        id=record.id,
        model_name=record.model_name,
        provider=record.provider,
        upstream_model=record.upstream_model,
        base_url=record.base_url,
        has_api_key=bool(record.api_key_encrypted),
        weight=record.weight,
        options=settings.get("options") or {},
        timeout=schemas.Timeouts.model_validate(settings.get("timeout") or {}),
        headers=settings.get("headers") or {},
        proxy=settings.get("proxy"),
        drop_params=bool(settings.get("drop_params", False)),
        enabled=record.enabled,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def _secret_box(call: Call) -> SecretBox | None:
    box = getattr(call.gateway, "secret_box", None)
    return box if isinstance(box, SecretBox) else SecretBox.from_config(call.gateway.config)


def _body_fields(record: models.DeploymentRecord) -> dict[str, Any]:
    """A stored record as the fields of a create body (without the api key)."""
    settings = record.settings or {}
    return {
        "model_name": record.model_name,
        "provider": record.provider,
        "upstream_model": record.upstream_model,
        "base_url": record.base_url,
        "weight": record.weight,
        "enabled": record.enabled,
        **{name: settings[name] for name in SETTINGS_KEYS if name in settings},
    }


def _record_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Body fields as the record's columns."""
    return {
        "model_name": fields["model_name"],
        "provider": fields["provider"],
        "upstream_model": fields.get("upstream_model"),
        "base_url": fields.get("base_url"),
        "weight": fields.get("weight", 1.0),
        "enabled": fields.get("enabled", True),
        "settings": {name: fields[name] for name in SETTINGS_KEYS if fields.get(name) is not None},
    }


def check_record(call: Call, record: models.DeploymentRecord) -> None:
    """Build the record's deployment the way the gateway will when it loads it; 400 naming the field
    when it cannot be served (unknown provider, invalid options, provider refusing it)."""
    gateway = call.gateway
    try:
        config = deployment_config(record, _secret_box(call))
    except InvalidRecord as exc:
        raise bad_request(f"Invalid deployment: {exc}", code="invalid_value") from None
    if config.provider not in gateway.providers:
        known = ", ".join(sorted(gateway.providers)) or "none"
        raise bad_request(
            f"provider: unknown provider {config.provider!r} (known: {known})",
            param="provider",
            code="invalid_value",
        )
    configured = getattr(gateway, "_config_models", gateway.models).get(record.model_name)
    group_name = configured.name if configured is not None else record.model_name
    try:
        build_deployment(config, group_name, str(config.id), gateway.providers, gateway.http)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        param = (
            "options." + ".".join(str(part) for part in errors[0]["loc"]) if errors[0]["loc"] else "options"
        )
        problems = "; ".join(
            f"options.{'.'.join(str(p) for p in e['loc'])}: "
            f"{'unknown option' if e['type'] == 'extra_forbidden' else e['msg']}"
            for e in errors[:5]
        )
        raise bad_request(f"Invalid deployment: {problems}", param=param, code="invalid_value") from None
    except ConfigError as exc:
        message = str(exc)
        api_key_param = "api_key" if "api key" in message.lower() else None
        raise bad_request(
            f"Invalid deployment: {message}", param=api_key_param, code="invalid_value"
        ) from None


async def models_changed(call: Call) -> None:
    """Rebuild the model table of this gateway and of every other (``lockgate:deployments``)."""
    gateway = call.gateway
    try:
        # Delivered to this gateway's own subscriber too, which reloads before publish returns.
        await notify_deployments_changed(getattr(gateway, "events", None))
    except Exception as exc:
        log.warning("could not announce a deployment change: %s: %s", type(exc).__name__, exc)
        await gateway.reload_models()


async def visible_deployment(call: Call) -> models.DeploymentRecord:
    record = await models.DeploymentRecord.get_or_none(id=call.path_id())
    if record is None:
        raise not_found("deployment")
    return record


async def list_deployments(call: Call) -> schemas.DeploymentList:
    q: schemas.DeploymentQuery = call.query
    query = models.DeploymentRecord.all()
    if q.model_name is not None:
        query = query.filter(model_name=q.model_name)
    if q.provider is not None:
        query = query.filter(provider=q.provider)
    if q.enabled is not None:
        query = query.filter(enabled=q.enabled)
    rows, paging = await fetch_page(query, q, "created_at", "id")
    return schemas.DeploymentList(data=[deployment_out(record) for record in rows], **paging)


async def get_deployment(call: Call) -> schemas.Deployment:
    return deployment_out(await visible_deployment(call))


def _encrypt(call: Call, api_key: str) -> str:
    box = _secret_box(call)
    if box is None:
        raise bad_request(f"api_key: {NO_KEY_MESSAGE}", param="api_key")
    return box.encrypt(api_key)


async def create_deployment(call: Call) -> schemas.Deployment:
    body: schemas.DeploymentCreate = call.body
    fields = body.model_dump(mode="json", exclude={"api_key"})
    encrypted = _encrypt(call, body.api_key) if body.api_key is not None else None
    record = models.DeploymentRecord(**_record_values(fields), api_key_encrypted=encrypted)
    check_record(call, record)
    await record.save()
    await models_changed(call)
    log.info("deployment %s of model %r created (provider %s)", record.id, record.model_name, record.provider)
    return deployment_out(record)


async def update_deployment(call: Call) -> schemas.Deployment:
    body: schemas.DeploymentUpdate = call.body
    record = await visible_deployment(call)
    changes = body.model_dump(mode="json", exclude_unset=True, exclude={"api_key"})
    for name in (
        "model_name",
        "provider",
        "weight",
        "options",
        "timeout",
        "headers",
        "drop_params",
        "enabled",
    ):
        if name in changes and changes[name] is None:
            raise bad_request(f"{name} cannot be null.", param=name)
    values = _record_values({**_body_fields(record), **changes})
    if "api_key" in body.model_fields_set:
        values["api_key_encrypted"] = _encrypt(call, body.api_key) if body.api_key is not None else None
    record.update_from_dict(values)
    check_record(call, record)
    await record.save()
    await models_changed(call)
    return deployment_out(record)


async def delete_deployment(call: Call) -> None:
    record = await visible_deployment(call)
    await record.delete()
    await models_changed(call)


OPERATIONS = [
    Operation(
        "GET",
        "/deployments",
        list_deployments,
        "List deployments",
        "deployments",
        scoped=False,
        query=schemas.DeploymentQuery,
        response=schemas.DeploymentList,
        description="The deployments stored in the database (the configuration file's are not listed).",
    ),
    Operation(
        "POST",
        "/deployments",
        create_deployment,
        "Create a deployment",
        "deployments",
        role=Role.WRITE,
        scoped=False,
        body=schemas.DeploymentCreate,
        response=schemas.Deployment,
        status=201,
        description=(
            "The model is served at once by this gateway, and by the others as soon as they hear of it. "
            "A deployment that could not be served (unknown provider, invalid options, missing API "
            "key) is refused with 400 naming the field."
        ),
    ),
    Operation(
        "GET",
        "/deployments/{id}",
        get_deployment,
        "Get a deployment",
        "deployments",
        scoped=False,
        response=schemas.Deployment,
        errors=(404,),
    ),
    Operation(
        "PATCH",
        "/deployments/{id}",
        update_deployment,
        "Update a deployment",
        "deployments",
        role=Role.WRITE,
        scoped=False,
        body=schemas.DeploymentUpdate,
        response=schemas.Deployment,
        description="`api_key` left out keeps the stored key; `null` removes it.",
        errors=(404,),
    ),
    Operation(
        "DELETE",
        "/deployments/{id}",
        delete_deployment,
        "Delete a deployment",
        "deployments",
        role=Role.WRITE,
        scoped=False,
        status=204,
        errors=(404,),
    ),
]
