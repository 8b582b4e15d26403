"""``/admin/api/deployments``: deployments managed at run time, beside the configuration's.

A deployment is checked exactly as start-up checks the configuration's (provider known, its options
valid, the provider built), so a bad one is a 400 naming the field and never reaches the model table.
It has every setting of a configured deployment (limits, credential pool, proxies, price, health
checks), stored in the record's ``settings``. Its upstream ``api_key`` and the ``api_key`` of each of
its ``credentials`` are write-only: stored encrypted with ``secrets.key`` and answered as
``has_api_key``. An update that sends ``credentials`` replaces the pool; a credential in it without
``api_key`` keeps the stored key of the credential with the same ``id`` (or position, when it has no
``id``). After each change this gateway rebuilds its models and the change is announced on
``lockgate:deployments`` for the others.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from gateway_core.address_guard import AddressGuard
from gateway_core.admin import schemas
from gateway_core.admin.api import Call, Operation, fetch_page, not_found, unprocessable
from gateway_core.config import DeploymentConfig
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


def credential_out(item: Mapping[str, Any]) -> schemas.DeploymentCredential:
    """A stored credential without its key."""
    return schemas.DeploymentCredential(
        id=item.get("id"),
        has_api_key=bool(item.get("api_key_encrypted")),
        rpm=item.get("rpm"),
        tpm=item.get("tpm"),
        options=item.get("options") or {},
    )


def deployment_out(record: models.DeploymentRecord) -> schemas.Deployment:
    settings = record.settings or {}
    price = settings.get("price")
    return schemas.Deployment(
        id=record.id,
        model_name=record.model_name,
        provider=record.provider,
        upstream_model=record.upstream_model,
        base_url=record.base_url,
        has_api_key=bool(record.api_key_encrypted),
        weight=record.weight,
        rpm=settings.get("rpm"),
        tpm=settings.get("tpm"),
        credentials=[credential_out(item) for item in settings.get("credentials") or ()],
        credential_strategy=settings.get("credential_strategy") or "round_robin",
        options=settings.get("options") or {},
        timeout=schemas.Timeouts.model_validate(settings.get("timeout") or {}),
        headers=settings.get("headers") or {},
        proxy=settings.get("proxy"),
        proxies=settings.get("proxies") or [],
        proxy_pool=settings.get("proxy_pool"),
        drop_params=bool(settings.get("drop_params", False)),
        price=schemas.DeploymentPrice.model_validate(price) if price is not None else None,
        health_check=settings.get("health_check"),
        optional=bool(settings.get("optional", False)),
        enabled=record.enabled,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def _secret_box(call: Call) -> SecretBox | None:
    box = getattr(call.gateway, "secret_box", None)
    return box if isinstance(box, SecretBox) else SecretBox.from_config(call.gateway.config)


def _body_fields(record: models.DeploymentRecord) -> dict[str, Any]:
    """A stored record as the fields of a create body (without the api key; credentials as stored)."""
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


#: Settings a record leaves out while they hold these defaults, so that a record using none of them
#: stays readable by a gateway of the previous release (during a rolling upgrade).
_LEFT_OUT_DEFAULTS: dict[str, Any] = {
    "credentials": [],
    "credential_strategy": "round_robin",
    "proxies": [],
    "optional": False,
}


def _record_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Body fields as the record's columns."""
    settings = {
        name: fields[name]
        for name in SETTINGS_KEYS
        if fields.get(name) is not None
        and not (name in _LEFT_OUT_DEFAULTS and fields[name] == _LEFT_OUT_DEFAULTS[name])
    }
    return {
        "model_name": fields["model_name"],
        "provider": fields["provider"],
        "upstream_model": fields.get("upstream_model"),
        "base_url": fields.get("base_url"),
        "weight": fields.get("weight", 1.0),
        "enabled": fields.get("enabled", True),
        "settings": settings,
    }


def _stored_credentials(
    call: Call, sent: list[schemas.DeploymentCredentialBody], stored: object
) -> list[dict[str, Any]]:
    """The credentials of a body as the record stores them: each ``api_key`` encrypted. One sent
    without ``api_key`` keeps the stored key of the credential with the same id (its position when it
    has none); ``api_key: null`` leaves it without a key of its own."""
    kept: dict[str, str] = {}
    if isinstance(stored, list):
        for index, item in enumerate(stored):
            if isinstance(item, Mapping) and isinstance(item.get("api_key_encrypted"), str):
                kept[str(item.get("id") or index)] = item["api_key_encrypted"]
    credentials = []
    for index, credential in enumerate(sent):
        values = credential.model_dump(mode="json", exclude={"api_key"}, exclude_none=True)
        if credential.api_key is not None:
            values["api_key_encrypted"] = _encrypt(call, credential.api_key, f"credentials[{index}].api_key")
        elif "api_key" not in credential.model_fields_set:
            token = kept.get(credential.id or str(index))
            if token is not None:
                values["api_key_encrypted"] = token
        credentials.append(values)
    return credentials


#: A problem a provider or a credential pool reports about one field: ``credentials[1]: ...``.
_FIELD_PREFIX = re.compile(r"([a-z_]+)((?:\[\d+\])?(?:\.[a-z_]+)*): ")


def _config_error_param(message: str) -> str | None:
    """The field a :class:`ConfigError` of a deployment names, else ``api_key`` for a missing key."""
    match = _FIELD_PREFIX.match(message)
    param = None
    if match is not None and match.group(1) in DeploymentConfig.model_fields:
        name = "upstream_model" if match.group(1) == "model" else match.group(1)
        param = name + match.group(2)
    if "api key" in message.lower():
        if param is None:
            return "api_key"
        if re.fullmatch(r"credentials\[\d+\]", param):
            return f"{param}.api_key"
    return param


def _check_addresses(guard: AddressGuard | None, config: DeploymentConfig) -> None:
    """A 400 naming the URL field whose host is an address the deployment may not reach (a loopback,
    private, link-local or metadata address; see :mod:`gateway_core.address_guard`)."""
    if guard is None:
        return
    urls = [("base_url", config.base_url), ("proxy", config.proxy)]
    urls += [(f"proxies[{index}]", proxy) for index, proxy in enumerate(config.proxies)]
    for name, url in urls:
        problem = guard.url_problem(url) if url else None
        if problem is not None:
            raise bad_request(f"{name}: {problem}", param=name, code="invalid_value")


def check_record(call: Call, record: models.DeploymentRecord) -> None:
    """Build the record's deployment the way the gateway will when it loads it; 400 naming the field
    when it cannot be served (unknown provider, invalid options or settings, provider refusing it)."""
    gateway = call.gateway
    try:
        config = deployment_config(record, _secret_box(call))
    except InvalidRecord as exc:
        raise unprocessable(f"Invalid deployment: {exc}", param=exc.param) from None
    _check_addresses(gateway.record_http.guard, config)
    if config.provider not in gateway.providers:
        known = ", ".join(sorted(gateway.providers)) or "none"
        raise unprocessable(
            f"provider: unknown provider {config.provider!r} (known: {known})", param="provider"
        )
    configured = getattr(gateway, "_config_models", gateway.models).get(record.model_name)
    group_name = configured.name if configured is not None else record.model_name
    try:
        build_deployment(config, group_name, str(config.id), gateway.providers, gateway.record_http)
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
        raise unprocessable(f"Invalid deployment: {problems}", param=param) from None
    except ConfigError as exc:
        message = str(exc)
        raise unprocessable(f"Invalid deployment: {message}", param=_config_error_param(message)) from None


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


def _encrypt(call: Call, api_key: str, param: str = "api_key") -> str:
    box = _secret_box(call)
    if box is None:
        raise unprocessable(f"{param}: {NO_KEY_MESSAGE}", param=param)
    return box.encrypt(api_key)


async def create_deployment(call: Call) -> schemas.Deployment:
    body: schemas.DeploymentCreate = call.body
    fields = body.model_dump(mode="json", exclude={"api_key", "credentials"})
    fields["credentials"] = _stored_credentials(call, body.credentials, None)
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
    changes = body.model_dump(mode="json", exclude_unset=True, exclude={"api_key", "credentials"})
    if body.credentials is not None:
        stored = (record.settings or {}).get("credentials")
        changes["credentials"] = _stored_credentials(call, body.credentials, stored)
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
            "It takes every setting of a configured deployment. A deployment that could not be served "
            "(unknown provider, invalid options or settings, missing API key) is refused with 400 naming "
            "the field. The upstream `api_key` and each credential's `api_key` are write-only: stored "
            "encrypted with `secrets.key` and answered as `has_api_key`."
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
        description=(
            "`api_key` left out keeps the stored key; `null` removes it. `credentials` replaces the "
            "whole pool: a credential sent without `api_key` keeps the stored key of the credential with "
            "the same `id` (its position in the pool when it has no `id`), `api_key: null` removes it."
        ),
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
