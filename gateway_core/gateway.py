"""The gateway of one worker: configuration, plugins, registries, model groups and life cycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

from gateway_core.balancing import Balancer
from gateway_core.config import GatewayConfig
from gateway_core.dlp import DlpFilter
from gateway_core.errors import (
    GatewayError,
    invalid_api_key,
    missing_api_key,
    model_not_allowed,
    model_not_found,
)
from gateway_core.http import HttpClient
from gateway_core.plugins import PluginHost
from gateway_core.providers import Provider
from gateway_core.registry import Registry
from gateway_core.routes import ExtraRoute
from gateway_core.routing import ModelGroup, build_model_groups
from gateway_core.types import Principal, RequestContext

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
        self.http = HttpClient(config.http)
        #: Model groups by name and by alias.
        self.models: dict[str, ModelGroup] = build_model_groups(
            config, self.providers, self.balancers, self.http
        )
        #: Per-gateway state of plugins, keyed by plugin name.
        self.plugin_state: dict[str, Any] = {}
        self.ready = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- life cycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.http.start()
        try:
            await self.plugins.call_all("lockgate_startup", gateway=self)
        except BaseException:
            await self.http.close()
            raise
        self.ready = True
        log.info(
            "lockgate ready: %d model(s), %d plugin(s)", len(self.groups()), len(self.plugins.describe())
        )

    async def stop(self) -> None:
        """Stop serving: finish background work (settlements, flushes), run shutdown hooks, close the pool."""
        self.ready = False
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.config.server.graceful_timeout or None)
        try:
            await self.plugins.call_each("lockgate_shutdown", gateway=self)
        finally:
            await self.http.close()

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
        await self.plugins.call_all("lockgate_policy_check", ctx=ctx)

    async def settle(self, ctx: RequestContext) -> None:
        await self.plugins.call_each("lockgate_policy_settle", ctx=ctx)

    # --- views ----------------------------------------------------------------------------------------

    def groups(self) -> list[ModelGroup]:
        """Distinct model groups in configuration order."""
        seen: dict[int, ModelGroup] = {}
        for group in self.models.values():
            seen.setdefault(id(group), group)
        return list(seen.values())


__all__ = ["Gateway", "GatewayError"]
