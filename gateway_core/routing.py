"""Deployments, model groups and routing rules.

The configuration's groups are built once at start-up; deployments and routing rules managed in the
database are merged in by :meth:`gateway_core.gateway.Gateway.reload_models`, which builds a new table
and swaps it whole.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway_core.config import DeploymentConfig, GatewayConfig
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


def build_deployment(
    dep_config: DeploymentConfig,
    group_name: str,
    deployment_id: str,
    providers: Registry[type[Provider]],
    http: HttpClient,
) -> Deployment:
    """Instantiate one deployment of ``group_name``.

    Raises ``ConfigError`` for an unknown provider (``.provider``) or a provider refusing the deployment,
    and pydantic's ``ValidationError`` for bad provider options; the caller says where it came from.
    """
    provider_cls = providers.get(dep_config.provider)
    options = provider_cls.Options.model_validate(dep_config.options)
    if dep_config.model is None:  # providers always see the upstream model name
        dep_config = dep_config.model_copy(update={"model": group_name})
    provider = provider_cls(dep_config, options, http)
    return Deployment(
        id=deployment_id,
        group=group_name,
        provider=provider,
        upstream_model=dep_config.model or group_name,
        weight=dep_config.weight,
    )


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
                providers.get(dep_config.provider)
            except ConfigError as exc:
                raise ConfigError(f"{config.source}: {where}.provider: {exc}") from None
            try:
                deployment = build_deployment(
                    dep_config, group_name, dep_config.id or f"{group_name}/{index}", providers, http
                )
            except ValidationError as exc:
                prefix = ("models", group_name, "deployments", index, "options")
                raise ConfigError(format_validation_error(config.source, exc, prefix)) from None
            except ConfigError as exc:
                raise ConfigError(f"{config.source}: {where}: {exc}") from None
            deployments.append(deployment)
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


def distinct_groups(table: Mapping[str, ModelGroup]) -> list[ModelGroup]:
    """The groups of a model table (keyed by names and aliases), each once, in table order."""
    seen: dict[int, ModelGroup] = {}
    for group in table.values():
        seen.setdefault(id(group), group)
    return list(seen.values())


def merge_model_groups(
    base: Mapping[str, ModelGroup],
    additions: Mapping[str, Sequence[Deployment]],
    balancers: Registry[type[Balancer]],
    *,
    strategy: str = "round_robin",
) -> dict[str, ModelGroup]:
    """A new model table: ``base`` (keyed by names and aliases) plus deployments managed at run time.

    Deployments for a name or alias of a ``base`` group join that group (a new group object with a
    fresh balancer of the same class; ``base`` is left as it was). Deployments for a new name make a new
    group balanced with ``strategy``. The groups of ``base`` keep their deployment objects, so
    in-flight counters stay true across merges.
    """
    extra: dict[int, list[Deployment]] = {}
    new_groups: dict[str, list[Deployment]] = {}
    for name, deployments in additions.items():
        if not deployments:
            continue
        group = base.get(name)
        if group is not None:
            extra.setdefault(id(group), []).extend(deployments)
        else:
            new_groups.setdefault(name, []).extend(deployments)
    replaced: dict[int, ModelGroup] = {}
    for group in distinct_groups(base):
        added = extra.get(id(group))
        if added:
            deployments = (*group.deployments, *added)
            replaced[id(group)] = ModelGroup(
                name=group.name,
                deployments=deployments,
                balancer=type(group.balancer)(group.name, deployments),
                aliases=group.aliases,
                owned_by=group.owned_by,
                created=group.created,
            )
    table = {key: replaced.get(id(group), group) for key, group in base.items()}
    if new_groups:
        balancer_cls = balancers.get(strategy)
        for name, deployments in new_groups.items():
            table[name] = ModelGroup(
                name=name, deployments=tuple(deployments), balancer=balancer_cls(name, deployments)
            )
    return table


class RoutingRules:
    """Routing rules compiled into one regular expression: model name → model group, by priority.

    Patterns are exact names or globs (``*``, ``?``, ``[...]``, case-sensitive); the first rule in
    priority order wins. :meth:`match` is one regular-expression match, and its answers are remembered
    (up to :attr:`CACHE_SIZE` names), so a name seen before costs a dictionary lookup.
    """

    __slots__ = ("_cache", "_groups", "_regex", "patterns")

    CACHE_SIZE = 4096

    def __init__(self, rules: Sequence[tuple[str, ModelGroup]] = ()) -> None:
        #: ``(pattern, group name)`` in the order they are tried.
        self.patterns: tuple[tuple[str, str], ...] = tuple((p, g.name) for p, g in rules)
        self._groups = {f"r{index}": group for index, (_, group) in enumerate(rules)}
        alternatives = [f"(?P<r{index}>{_rule_regex(p)})" for index, (p, _) in enumerate(rules)]
        self._regex = re.compile("|".join(alternatives)) if alternatives else None
        self._cache: dict[str, ModelGroup | None] = {}

    def match(self, model: str) -> ModelGroup | None:
        """The group of the first rule whose pattern matches ``model``; None when none does."""
        if self._regex is None:
            return None
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = self._regex.match(model)
        group = self._groups[found.lastgroup] if found is not None and found.lastgroup else None
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[model] = group
        return group

    def __len__(self) -> int:
        return len(self._groups)


def is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def _rule_regex(pattern: str) -> str:
    return fnmatch.translate(pattern) if is_glob(pattern) else re.escape(pattern) + r"\Z"
