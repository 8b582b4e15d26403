"""The gateway of one worker: configuration, plugins, registries, model groups and life cycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from gateway_core.address_guard import record_guard
from gateway_core.balancing import Balancer
from gateway_core.config import GatewayConfig
from gateway_core.dlp.engine import Dlp
from gateway_core.dlp.filter import DlpFilter
from gateway_core.errors import (
    ConfigError,
    GatewayError,
    invalid_api_key,
    missing_api_key,
    model_not_allowed,
    model_not_found,
)
from gateway_core.events import DEPLOYMENTS_CHANNEL, Events
from gateway_core.health import HealthTracker
from gateway_core.http import HttpClient
from gateway_core.limits import Counters
from gateway_core.metrics import Metrics
from gateway_core.plugins import PluginHost
from gateway_core.pricing import PriceTable
from gateway_core.providers import Provider
from gateway_core.registry import Registry
from gateway_core.resilience import Policies
from gateway_core.routes import ExtraRoute
from gateway_core.routing import (
    Deployment,
    ModelGroup,
    ProviderRoutes,
    RoutingRules,
    build_deployment,
    build_model_groups,
    config_rule_patterns,
    distinct_groups,
    merge_model_groups,
    resolve_rules,
)
from gateway_core.types import Principal, RequestContext

if TYPE_CHECKING:
    from gateway_core.balancer_sync import BalancerSync
    from gateway_core.store.database import Database
    from gateway_core.store.kv import SharedRedis
    from gateway_core.store.secrets import SecretBox
    from gateway_core.tracing import Tracing
    from gateway_core.usage.log import UsageLog

log = logging.getLogger("lockgate")


class Gateway:
    """Everything a worker serves with, built once from the configuration.

    Building it validates the configuration, loads plugins and instantiates every deployment, so
    mistakes stop start-up (and ``lockgate check-config``) before any request is served.
    """

    def __init__(self, config: GatewayConfig, *, extra_plugins: Iterable[tuple[str, object]] = ()) -> None:
        self.config = config
        self.plugins = PluginHost(disabled=config.disabled_plugins(), extra=extra_plugins)
        self.plugins.check_configured_names(config.plugins, config.source)
        self.providers: Registry[type[Provider]] = Registry("provider")
        self.balancers: Registry[type[Balancer]] = Registry("balancer")
        self.dlp_filters: Registry[type[DlpFilter]] = Registry("DLP filter")
        self.extra_routes: list[ExtraRoute] = []
        self.plugins.fill("lockgate_register_providers", self.providers)
        self.plugins.fill("lockgate_register_balancers", self.balancers)
        self.plugins.fill("lockgate_register_dlp_filters", self.dlp_filters)
        self.plugins.register_all("lockgate_register_routes", self.extra_routes.append)
        #: Data-loss prevention: the configured filters and policies (None without ``dlp.filters``).
        self.dlp: Dlp | None = None
        if config.dlp is not None:
            if not config.dlp.filters:
                raise ConfigError(
                    f"{config.source}: dlp: name the filters to run under dlp.filters (e.g. pii_patterns: {{}})"
                )
            self.dlp = Dlp(
                config.dlp,
                self.dlp_filters,
                source=config.source,
                secrets_key=config.secrets.key.get_secret_value() if config.secrets is not None else None,
            )
        self.http = HttpClient(config.http, secrets=config.resolved_secrets)
        #: The session of deployments managed in the database: it connects only to public addresses and
        #: to what ``admin.allowed_upstreams`` (and the configuration's proxy pools) let through.
        self.record_http = HttpClient(
            config.http, secrets=config.resolved_secrets, guard=record_guard(config), shared=self.http.shared
        )
        #: Model groups by name and by alias: the configuration's, plus the database's once started.
        #: Replaced whole (never changed in place) when deployments are reloaded.
        self.models: dict[str, ModelGroup] = build_model_groups(
            config, self.providers, self.balancers, self.http
        )
        self._config_models = self.models
        #: ``provider/model`` ids of the ``providers`` section, built on first use.
        self.provider_routes = ProviderRoutes(config, self.providers, self.balancers, self.http)
        #: Retry, fallback and deadline policies of the model groups.
        self.resilience = Policies(config)
        self._check_fallbacks()
        #: Prices of the deployments' models (table file, config and run-time overrides).
        self.pricing = PriceTable(config.pricing, config.base_dir)
        #: Routing rules (the database's, then the configuration's), tried when a name is neither a
        #: model, an alias nor a ``provider/model`` id.
        self.routing_rules = self._config_routing_rules()
        #: The SQL database (None without a ``database`` section).
        self.database: Database | None = None
        if config.database is not None:
            from gateway_core.store.database import Database

            self.database = Database.from_config(config)
        #: One record per request, written in batches (None without a database or with usage disabled).
        self.usage_log: UsageLog | None = None
        if self.database is not None and config.usage.active(has_database=True):
            from gateway_core.usage.log import UsageLog

            self.usage_log = UsageLog(
                self.database,
                config.usage,
                config.usage.resolved_spool_dir(config.base_dir),
                # Past this, what is left goes to the spool: fast, and within the orchestrator's patience.
                stop_timeout=min(max(config.server.graceful_timeout, 1.0), 10.0),
            )
        #: Encrypts provider API keys stored in the database (None without ``secrets.key``).
        self.secret_box: SecretBox | None = None
        if config.secrets is not None:
            from gateway_core.store.secrets import SecretBox

            self.secret_box = SecretBox.from_config(config)
        #: Broadcast notifications to every replica (Redis pub/sub with ``redis.url``, else in-process).
        self.events = Events(config.redis.url if config.redis is not None else None)
        #: The shared Redis client for counters and state every replica must agree on (None without
        #: a ``redis`` section).
        self.redis: SharedRedis | None = None
        if config.redis is not None:
            from gateway_core.store.kv import SharedRedis

            self.redis = SharedRedis(config.redis)
        #: Counters of rate limits, quotas and budgets: in Redis when configured (global), else in memory.
        self.counters = Counters(
            self.redis, on_outage=config.redis.on_outage if config.redis is not None else "open"
        )
        #: Circuit breakers, cool-downs, outlier detection and active checks of the deployments.
        self.health = HealthTracker(self)
        #: Shares balancers' in-flight counts and latencies with the other replicas (with Redis).
        self.balancer_sync: BalancerSync | None = None
        if self.redis is not None:
            from gateway_core.balancer_sync import BalancerSync

            self.balancer_sync = BalancerSync(self.redis, self.groups)
        if self.database is not None:
            self.events.subscribe(DEPLOYMENTS_CHANNEL, self._deployments_changed)
            # Deployments may have changed while the database or Redis was out of reach.
            self.database.on_recover(self.reload_models)
            self.events.on_reconnect(self.reload_models)
        #: Spans of requests and upstream calls (None unless ``tracing.enabled``).
        self.tracing: Tracing | None = None
        if config.tracing.enabled:
            from gateway_core.tracing import Tracing

            self.tracing = Tracing(config.tracing)
            self.http.propagate = self.record_http.propagate = True
        #: Whether each model request writes an access line (``logging.access``).
        self.access_log = config.logging.access
        #: Prometheus metrics: the request metrics, and where plugins add theirs (``GET /metrics``).
        self.metrics = Metrics(config.metrics)
        #: Per-gateway state of plugins, keyed by plugin name.
        self.plugin_state: dict[str, Any] = {}
        self.ready = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        #: Deployments built from database records, by record id and last update (reused on reload).
        self._record_deployments: dict[tuple[str, str], Deployment] = {}

    def _config_routing_rules(self) -> RoutingRules:
        """The configuration's routing rules; a target naming no model is a mistake, unless the
        database may define it (the rule then waits for it)."""
        rules, missing = resolve_rules(config_rule_patterns(self.config), self._rule_target(self.models))
        if missing and self.config.database is None:
            raise ConfigError(
                f"{self.config.source}: routing.rules name models that do not exist: "
                f"{', '.join(sorted(set(missing)))}"
            )
        return RoutingRules(rules)

    def _rule_target(self, table: dict[str, ModelGroup]) -> Callable[[str], ModelGroup | None]:
        def resolve(name: str) -> ModelGroup | None:
            return table.get(name) or self.provider_routes.match(name)

        return resolve

    def _check_fallbacks(self) -> None:
        """A fallback naming no configured model is a mistake, unless the database may define it."""
        unknown = sorted(name for name in self.resilience.targets() if name not in self.models)
        if not unknown:
            return
        if self.config.database is None:
            raise ConfigError(
                f"{self.config.source}: fallbacks name models that do not exist: {', '.join(unknown)}"
            )
        log.warning("fallbacks name models not in the configuration (yet): %s", ", ".join(unknown))

    # --- life cycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the upstream pool, the database and the events bus, load the database's deployments,
        then run the plugins' start-up hooks (which may use all of them)."""
        await self.http.start()
        await self.record_http.start()
        try:
            if self.database is not None:
                await self.database.start()
            await self.events.start()
            if self.redis is not None:
                await self.redis.start()
            if self.database is not None:
                await self.reload_models()
            await self.health.start()
            if self.balancer_sync is not None:
                self.balancer_sync.start()
            await self.plugins.call_all("lockgate_startup", gateway=self)
            if self.dlp is not None:
                await self.dlp.start()
            await self.events.wait_subscribed()
            if self.usage_log is not None:
                await self.usage_log.start()
        except BaseException:
            await self._close_resources()
            raise
        self.ready = True
        log.info(
            "lockgate ready: %d model(s), %d plugin(s)", len(self.groups()), len(self.plugins.describe())
        )

    async def stop(self) -> None:
        """Stop serving: finish background work (settlements, flushes), run shutdown hooks, then close
        the events bus, the database and the upstream pool."""
        self.ready = False
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.config.server.graceful_timeout or None)
        if self.usage_log is not None:  # store (or spool) every record while the database is open
            await self.usage_log.stop()
        try:
            await self.plugins.call_each("lockgate_shutdown", gateway=self)
            await self.counters.stop()
            if self.dlp is not None:
                await self.dlp.stop()
            if self.tracing is not None:
                await asyncio.to_thread(self.tracing.shutdown)  # exports what is left
        finally:
            self.metrics.stop()
            await self._close_resources()

    async def _close_resources(self) -> None:
        try:
            if self.balancer_sync is not None:
                await self.balancer_sync.stop()
            await self.health.stop()
            await self.events.stop()
            if self.redis is not None:
                await self.redis.stop()
        finally:
            try:
                if self.database is not None:
                    await self.database.stop()
            finally:
                await self.http.close()
                await self.record_http.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run background work that must finish even if the request is gone; shutdown awaits it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- per request ------------------------------------------------------------------------------------

    async def authenticate(self, ctx: RequestContext, credential: str | None) -> Principal:
        principal = await self.plugins.first_result("lockgate_authenticate", ctx=ctx, credential=credential)
        if principal is None:
            raise missing_api_key() if credential is None else invalid_api_key()
        if not isinstance(principal, Principal):
            raise TypeError(f"an auth hook returned {type(principal).__name__}, not a Principal")
        ctx.principal = principal
        return principal

    async def route(self, ctx: RequestContext, model: str) -> ModelGroup:
        group: ModelGroup | None = await self.plugins.first_result("lockgate_route", ctx=ctx, model=model)
        if group is None:
            raise model_not_found(model)
        principal = ctx.principal
        if principal is not None and not (principal.may_use(model) or principal.may_use(group.name)):
            raise model_not_allowed(model)
        ctx.group = group
        return group

    async def check_policies(self, ctx: RequestContext) -> None:
        """Run every policy check: each hook is called before any is awaited, so checks that start
        their counter operations in their synchronous part share one Redis round trip. The first
        rejection in hook order is raised once every check has answered."""
        await self.plugins.call_together("lockgate_policy_check", ctx=ctx)

    def start_settle(self, ctx: RequestContext) -> None:
        """Run the settle hooks of ``ctx``: their synchronous part now, what they await in a
        background task (none when no plugin had anything to settle)."""
        pending = self.plugins.start_each("lockgate_policy_settle", ctx=ctx)
        if pending:
            self.spawn(self.plugins.finish_each("lockgate_policy_settle", pending))

    # --- deployments managed in the database -------------------------------------------------------

    async def reload_models(self) -> bool:
        """Merge the database's enabled deployments and routing rules with the configuration's models.

        Builds a new model table and swaps it whole, so requests in flight keep the groups they
        routed to. A record that cannot be served is logged (id and reason) and skipped. Returns False,
        keeping the current table, when the database cannot be read.
        """
        database = self.database
        if database is None:
            return False
        from gateway_core.store.database import DatabaseUnavailable
        from gateway_core.store.deployments import enabled_deployments, enabled_routing_rules

        async with self._reload_lock:
            try:
                records = await database.run(enabled_deployments())
                rules = await database.run(enabled_routing_rules())
            except DatabaseUnavailable as exc:
                log.warning("deployments not reloaded, the current ones stay in use: %s", exc)
                return False
            self.models, self.routing_rules = self._merge_records(records, rules)
            self.health.refresh()
        extra = sum(1 for group in self.groups() for d in group.deployments if d.id.startswith("db:"))
        log.info(
            "models loaded: %d model(s), %d deployment(s) and %d routing rule(s) from the database",
            len(self.groups()),
            extra,
            len(self.routing_rules),
        )
        return True

    def _merge_records(
        self, records: Iterable[Any], rules: Iterable[Any]
    ) -> tuple[dict[str, ModelGroup], RoutingRules]:
        from pydantic import ValidationError

        from gateway_core.store.deployments import InvalidRecord, deployment_config

        additions: dict[str, list[Deployment]] = {}
        built: dict[tuple[str, str], Deployment] = {}
        for record in records:
            key = (str(record.id), str(record.updated_at))
            model_name = record.model_name.strip()
            target = self._config_models.get(model_name)  # a configured name or alias joins that group
            group_name = target.name if target is not None else model_name
            deployment = self._record_deployments.get(key)
            if deployment is None:
                try:
                    dep_config = deployment_config(record, self.secret_box)
                    deployment = build_deployment(
                        dep_config, group_name, str(dep_config.id), self.providers, self.record_http
                    )
                except (InvalidRecord, ConfigError) as exc:
                    log.error("deployment record %s skipped: %s", record.id, exc)
                    continue
                except ValidationError as exc:
                    problems = "; ".join(
                        f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
                    )
                    log.error("deployment record %s skipped: invalid options: %s", record.id, problems)
                    continue
                except Exception as exc:
                    log.error("deployment record %s skipped: %s: %s", record.id, type(exc).__name__, exc)
                    continue
            additions.setdefault(group_name, []).append(deployment)
            built[key] = deployment
        self._record_deployments = built
        table = merge_model_groups(self._config_models, additions, self.balancers)
        compiled: list[tuple[str, ModelGroup]] = []
        resolve = self._rule_target(table)
        for rule in rules:
            pattern, target_name = rule.pattern.strip(), rule.target.strip()
            group = resolve(target_name)
            if not pattern:
                log.error("routing rule %s skipped: the pattern is empty", rule.id)
            elif group is None:
                log.error("routing rule %s skipped: no model or alias is named %r", rule.id, target_name)
            else:
                compiled.append((pattern, group))
        configured, missing = resolve_rules(config_rule_patterns(self.config), resolve)
        for name in missing:
            log.error("configured routing rule skipped: no model or alias is named %r", name)
        return table, RoutingRules([*compiled, *configured])

    def _deployments_changed(self, message: dict[str, Any]) -> Coroutine[Any, Any, bool]:
        return self.reload_models()

    # --- views ----------------------------------------------------------------------------------------

    def groups(self) -> list[ModelGroup]:
        """Distinct model groups in configuration order (then those only the database has)."""
        return distinct_groups(self.models)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether to take traffic, and the state behind it (``GET /ready``).

        An unreachable database or Redis does not make the gateway unready: it keeps serving from the
        configuration and its caches. They show as ``"status": "degraded"``.
        """
        is_ready = self.ready and bool(self.models)
        body: dict[str, Any] = {
            "status": "ready" if is_ready else "starting" if not self.ready else "no models",
            "models": len(self.groups()),
        }
        degraded = False
        if self.database is not None:
            body["database"] = "ok" if self.database.healthy else "unavailable"
            degraded = not self.database.healthy
        if self.events.mode == "redis":
            body["events"] = "ok" if self.events.connected else "unavailable"
            degraded = degraded or not self.events.connected
        if self.redis is not None:
            body["limits"] = self.counters.status()
            degraded = degraded or not self.counters.healthy
        if self.usage_log is not None:
            body["usage"] = self.usage_log.status()
        if is_ready and degraded:
            body["status"] = "degraded"
        return is_ready, body


__all__ = ["Gateway", "GatewayError"]
