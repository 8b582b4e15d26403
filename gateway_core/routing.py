"""Deployments and model groups, built once from the configuration."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway_core.config import GatewayConfig
from gateway_core.errors import ConfigError
from gateway_core.providers import Provider

if TYPE_CHECKING:
    from gateway_core.balancing import Balancer
    from gateway_core.http import HttpClient
    from gateway_core.registry import Registry


@dataclass(slots=True, eq=False)
class Deployment:
    """One provider endpoint serving a model group."""

    id: str
    group: str
    provider: Provider
    upstream_model: str
    weight: float = 1.0
    #: Calls in flight on this deployment in this worker.
    in_flight: int = 0
    #: ``id`` as the ``x-lockgate-deployment`` response header value.
    header_value: bytes = b""

    def __post_init__(self) -> None:
        self.header_value = self.id.encode("ascii", "replace")


@dataclass(slots=True, eq=False)
class ModelGroup:
    """A model name clients use, its deployments and the strategy that picks one."""

    name: str
    deployments: tuple[Deployment, ...]
    balancer: Balancer
    aliases: tuple[str, ...] = ()
    owned_by: str = "lockgate"
    created: int = field(default_factory=lambda: int(time.time()))


def build_model_groups(
    config: GatewayConfig,
    providers: Registry[type[Provider]],
    balancers: Registry[type[Balancer]],
    http: HttpClient,
) -> dict[str, ModelGroup]:
    """Instantiate every deployment and balancer; return groups keyed by name and by alias.

    Provider options are validated here, so a bad deployment fails start-up with its config path.
    """
    from pydantic import ValidationError

    from gateway_core.config import format_validation_error

    by_name: dict[str, ModelGroup] = {}
    for group_name, group_config in config.models.items():
        deployments = []
        for index, dep_config in enumerate(group_config.deployments):
            where = f"models.{group_name}.deployments[{index}]"
            try:
                provider_cls = providers.get(dep_config.provider)
            except ConfigError as exc:
                raise ConfigError(f"{config.source}: {where}.provider: {exc}") from None
            try:
                options = provider_cls.Options.model_validate(dep_config.options)
            except ValidationError as exc:
                prefix = ("models", group_name, "deployments", index, "options")
                raise ConfigError(format_validation_error(config.source, exc, prefix)) from None
            try:
                provider = provider_cls(dep_config, options, http)
            except ConfigError as exc:
                raise ConfigError(f"{config.source}: {where}: {exc}") from None
            deployments.append(
                Deployment(
                    id=dep_config.id or f"{group_name}/{index}",
                    group=group_name,
                    provider=provider,
                    upstream_model=dep_config.model or group_name,
                    weight=dep_config.weight,
                )
            )
        try:
            balancer_cls = balancers.get(group_config.strategy)
        except ConfigError as exc:
            raise ConfigError(f"{config.source}: models.{group_name}.strategy: {exc}") from None
        by_name[group_name] = ModelGroup(
            name=group_name,
            deployments=tuple(deployments),
            balancer=balancer_cls(group_name, deployments),
            aliases=tuple(group_config.aliases),
            owned_by=group_config.owned_by,
        )
    table = dict(by_name)
    for group in by_name.values():
        for alias in group.aliases:
            if alias in table:
                raise ConfigError(
                    f"{config.source}: models.{group.name}.aliases: {alias!r} is already the name "
                    f"or an alias of model {table[alias].name!r}"
                )
            table[alias] = group
    return table
