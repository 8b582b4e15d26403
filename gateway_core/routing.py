"""Deployments, model groups and how model names find them: names and aliases, ``provider/model``
ids (:class:`ProviderRoutes`) and routing rules (:class:`RoutingRules`).

The configuration's groups are built once at start-up; deployments and routing rules managed in the
database are merged in by :meth:`gateway_core.gateway.Gateway.reload_models`, which builds a new table
and swaps it whole. ``provider/model`` groups are built on first use and kept (most recently used).
"""

from __future__ import annotations

import fnmatch
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway_core.config import DeploymentConfig, GatewayConfig, ProviderDefaultsConfig
from gateway_core.credentials import CredentialPool
from gateway_core.errors import ConfigError
from gateway_core.providers import Provider
from gateway_core.proxies import register_proxy_pools

if TYPE_CHECKING:
    from gateway_core.balancing import Balancer
    from gateway_core.http import HttpClient
    from gateway_core.registry import Registry
    from gateway_core.types import RequestContext

log = logging.getLogger("lockgate.routing")


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
    #: ``time.monotonic()`` until which this worker leaves the deployment alone: its credentials (or
    #: itself) are at their RPM/TPM limit. Balancers and the pipeline read it.
    limited_until: float = 0.0
    #: Whether :meth:`settle` must run once a call ended (a TPM limit counts the call's tokens).
    needs_settle: bool = False
    #: This worker's moving average of the time to first byte, in seconds (``lowest_latency``).
    latency: float | None = None
    #: Calls in flight on this deployment in the other workers and replicas, as of the last sync
    #: through Redis (0 without Redis).
    peer_in_flight: int = 0
    #: The mean of the other workers' and replicas' latency averages, and how many there are.
    peer_latency: float | None = None
    peer_latency_count: int = 0

    def __post_init__(self) -> None:
        self.header_value = self.id.encode("ascii", "replace")

    def shared_latency(self) -> float | None:
        """The latency average of every replica: this worker's and the others' (as of the last sync)."""
        own, peers, count = self.latency, self.peer_latency, self.peer_latency_count
        if peers is None or count == 0:
            return own
        if own is None:
            return peers
        return (own + peers * count) / (count + 1)

    async def settle(self, ctx: RequestContext) -> None:
        """Count the tokens of the call that ended on the TPM limits of the credential it used.

        Called once after the call (``ctx.usage`` may be None); never raises.
        """
        credentials = getattr(self.provider, "credentials", None)
        if isinstance(credentials, CredentialPool):
            await credentials.settle(ctx)


def unlimited(candidates: Sequence[Deployment], now: float | None = None) -> Sequence[Deployment]:
    """``candidates`` without those at their rate limit, unless all are (then ``candidates``).

    Returns ``candidates`` itself when none is limited (the usual case), so balancers can tell.
    """
    if now is None:
        now = time.monotonic()
    for deployment in candidates:
        if deployment.limited_until > now:
            break
    else:
        return candidates
    kept = [deployment for deployment in candidates if deployment.limited_until <= now]
    return kept or candidates


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
    """Instantiate one deployment of ``group_name``, its credentials prepared.

    Raises ``ConfigError`` for an unknown provider (``.provider``) or a provider refusing the deployment
    or one of its credentials, and pydantic's ``ValidationError`` for bad provider options; the caller
    says where it came from.
    """
    provider_cls = providers.get(dep_config.provider)
    options = provider_cls.Options.model_validate(dep_config.options)
    if dep_config.model is None:  # providers always see the upstream model name
        dep_config = dep_config.model_copy(update={"model": group_name})
    provider = provider_cls(dep_config, options, http)
    deployment = Deployment(
        id=deployment_id,
        group=group_name,
        provider=provider,
        upstream_model=dep_config.model or group_name,
        weight=dep_config.weight,
    )
    provider.credentials.bind(deployment)
    return deployment


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

    register_proxy_pools(http, config.proxy_pools)
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


class ProviderRoutes:
    """``provider/model`` ids: a named provider of the ``providers:`` section serves any upstream model
    its ``models`` globs allow, as a group of one deployment built on first use.

    ``openrouter/anthropic/claude-3.5-sonnet`` is served by the ``openrouter`` section with the upstream
    model ``anthropic/claude-3.5-sonnet``; the group and its deployment are both named by the whole id.
    Built groups are remembered (the :attr:`CACHE_SIZE` most recently used), so their deployments keep
    their state from one request to the next.
    """

    CACHE_SIZE = 1024

    def __init__(
        self,
        config: GatewayConfig,
        providers: Registry[type[Provider]],
        balancers: Registry[type[Balancer]],
        http: HttpClient,
    ) -> None:
        self.sections = dict(config.providers)
        self.providers = providers
        self.http = http
        self._allowed = {
            name: re.compile("|".join(fnmatch.translate(pattern) for pattern in section.models))
            for name, section in self.sections.items()
        }
        self._groups: OrderedDict[str, ModelGroup] = OrderedDict()
        self._balancer: type[Balancer] | None = None
        if self.sections:
            self._balancer = balancers.get("round_robin")
            self._check(config.source)

    def _check(self, source: str) -> None:
        """Build each section once at start-up, so a bad section fails it with its path."""
        from pydantic import ValidationError

        from gateway_core.config import format_validation_error

        for name, section in self.sections.items():
            try:
                self.providers.get(str(section.provider))
            except ConfigError as exc:
                raise ConfigError(f"{source}: providers.{name}.provider: {exc}") from None
            try:
                self._deployment(f"{name}/probe", section, "probe")
            except ValidationError as exc:
                raise ConfigError(
                    format_validation_error(source, exc, ("providers", name, "options"))
                ) from None
            except ConfigError as exc:
                raise ConfigError(f"{source}: providers.{name}: {exc}") from None

    def _deployment(self, model_id: str, section: ProviderDefaultsConfig, upstream: str) -> Deployment:
        config = section.model_copy(update={"model": upstream, "id": model_id})
        return build_deployment(config, model_id, model_id, self.providers, self.http)

    def allows(self, model: str) -> bool:
        """Whether ``model`` is a ``provider/model`` id a section serves."""
        name, sep, upstream = model.partition("/")
        allowed = self._allowed.get(name) if sep and upstream else None
        return allowed is not None and allowed.match(upstream) is not None

    def match(self, model: str) -> ModelGroup | None:
        """The group serving the ``provider/model`` id ``model``; None when no section allows it."""
        groups = self._groups
        group = groups.get(model)
        if group is not None:
            groups.move_to_end(model)
            return group
        if not self.allows(model):
            return None
        name, _, upstream = model.partition("/")
        try:
            deployment = self._deployment(model, self.sections[name], upstream)
        except Exception as exc:
            log.error("provider %s cannot serve %r: %s: %s", name, upstream, type(exc).__name__, exc)
            return None
        assert self._balancer is not None
        group = ModelGroup(
            name=model,
            deployments=(deployment,),
            balancer=self._balancer(model, (deployment,)),
            owned_by=name,
        )
        groups[model] = group
        if len(groups) > self.CACHE_SIZE:
            groups.popitem(last=False)
        return group

    def groups(self) -> list[ModelGroup]:
        """The groups built so far (most recently used last)."""
        return list(self._groups.values())


def config_rule_patterns(config: GatewayConfig) -> list[tuple[str, str]]:
    """``(pattern, target)`` of the configuration's ``routing.rules`` in order; a ``prefix`` becomes a
    glob matching what starts with it."""
    patterns = []
    for rule in config.routing.rules:
        if rule.prefix is not None:
            pattern = re.sub(r"([*?\[])", r"[\1]", rule.prefix) + "*"
        else:
            assert rule.match is not None
            pattern = rule.match
        patterns.append((pattern, rule.model))
    return patterns


def resolve_rules(
    patterns: Sequence[tuple[str, str]], resolve: Callable[[str], ModelGroup | None]
) -> tuple[list[tuple[str, ModelGroup]], list[str]]:
    """The rules whose target ``resolve`` finds, and the targets it does not."""
    rules: list[tuple[str, ModelGroup]] = []
    missing: list[str] = []
    for pattern, target in patterns:
        group = resolve(target)
        if group is None:
            missing.append(target)
        else:
            rules.append((pattern, group))
    return rules, missing


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
