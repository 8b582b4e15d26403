"""The plugin manager and the typed face the core calls it through.

Default plugins are ordinary entry points of the ``lockgate`` group, found exactly like a third
party's. A plugin disabled in the configuration (``plugins: {name: {enabled: false}}``) or left out of
``LOCKGATE_LOAD_PLUGINS`` is blocked before the entry points load, so it is never imported.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from importlib import metadata
from typing import Any

import pluggy

from gateway_core import hookspecs
from gateway_core.commands import Command
from gateway_core.errors import ConfigError
from gateway_core.registry import Registry

log = logging.getLogger("lockgate.plugins")

ENTRY_POINT_GROUP = "lockgate"
#: Hooks the core calls itself, lazily and in order, instead of through pluggy's eager multicall.
CALLED_HOOKS = (
    "lockgate_startup",
    "lockgate_shutdown",
    "lockgate_authenticate",
    "lockgate_route",
    "lockgate_policy_check",
    "lockgate_policy_settle",
)
LOAD_PLUGINS_ENV = "LOCKGATE_LOAD_PLUGINS"


def _invalid_plugin(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError) -> str:
    """pluggy's message, with the plugin's name instead of its object's repr."""
    name = pm.get_name(exc.plugin) or getattr(exc.plugin, "__name__", None) or type(exc.plugin).__name__
    return f"plugin {name!r} is invalid: " + str(exc).replace(repr(exc.plugin), repr(name))


def entry_point_names() -> list[str]:
    return sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})


class PluginHost:
    """One pluggy manager per process plus typed methods for every hook the core calls."""

    def __init__(self, *, disabled: Iterable[str] = (), extra: Iterable[tuple[str, object]] = ()) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        available = entry_point_names()
        blocked = set(disabled)
        only = os.environ.get(LOAD_PLUGINS_ENV)
        if only is not None:
            wanted = {name.strip() for name in only.split(",") if name.strip()}
            blocked |= set(available) - wanted
        for name in blocked:
            self.pm.set_blocked(name)
        try:
            self.pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
            for name, plugin in extra:
                # Skip a plugin that is blocked, or already loaded through its entry point (a plugin's
                # own tests pass it explicitly, whether or not its package is installed).
                if not self.pm.is_blocked(name) and self.pm.get_plugin(name) is not plugin:
                    self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise ConfigError(_invalid_plugin(self.pm, exc)) from None
        self.known_names = set(available) | {name for name, _ in extra}
        self._refresh()

    def _refresh(self) -> None:
        """Precompute the call order of the hooks the core calls itself (cheaper than pluggy per request)."""
        #: Per hook: (function, the arguments it takes or None when it takes all, plugin name).
        self._callers: dict[str, list[tuple[Callable[..., Any], tuple[str, ...] | None, str]]] = {}
        for name in CALLED_HOOKS:
            callers = []
            caller = getattr(self.pm.hook, name)
            every = set(caller.spec.argnames) if caller.spec is not None else None
            # pluggy's order: tryfirst first, trylast last, later registrations before earlier ones.
            for impl in reversed(caller.get_hookimpls()):
                if impl.hookwrapper or impl.wrapper:
                    raise ConfigError(f"plugin {impl.plugin_name!r}: {name} does not support wrappers")
                takes = tuple(impl.argnames)
                callers.append((impl.function, None if set(takes) == every else takes, impl.plugin_name))
            self._callers[name] = callers
        self.has_policies = bool(self._callers["lockgate_policy_check"])
        self.has_settle = bool(self._callers["lockgate_policy_settle"])

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object at run time (tests, embedding applications)."""
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise ConfigError(_invalid_plugin(self.pm, exc)) from None
        if name:
            self.known_names.add(name)
        self._refresh()

    def check_configured_names(self, configured: Iterable[str], source: str) -> None:
        unknown = sorted(set(configured) - self.known_names)
        if unknown:
            installed = ", ".join(sorted(self.known_names)) or "none"
            raise ConfigError(
                f"{source}: plugins.{unknown[0]}: no plugin of that name is installed "
                f"(installed: {installed})"
            )

    # --- start-up ------------------------------------------------------------------------------

    def register_all(
        self, hook_name: str, register: Callable[..., None], registry: Registry[Any] | None = None
    ) -> None:
        """Call a ``register_*`` hook of every plugin with ``register``.

        With a ``registry`` it learns which plugin registers what. Registration hooks are
        synchronous: an ``async def`` implementation is a start-up error, not a silent no-op.
        """
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            if registry is not None:
                registry.current_plugin = impl.plugin_name
            result = impl.function(**{arg: register for arg in impl.argnames})
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise ConfigError(
                    f"plugin {impl.plugin_name!r}: {hook_name} must be a plain function, not async"
                )
        if registry is not None:
            registry.current_plugin = "?"

    def fill(self, hook_name: str, registry: Registry[Any]) -> None:
        """Fill a typed registry from a ``register_*`` hook."""
        self.register_all(hook_name, registry.register, registry)

    def commands(self) -> list[Command]:
        found: list[Command] = []
        self.register_all("lockgate_register_commands", found.append)
        return found

    async def call_all(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of a hook in pluggy's order, awaiting what is awaitable.

        An exception stops the call: later implementations do not run.
        """
        for function, argnames, _ in self._callers[hook_name]:
            result = (
                function(**kwargs) if argnames is None else function(**{arg: kwargs[arg] for arg in argnames})
            )
            if inspect.isawaitable(result):
                await result

    async def call_together(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation, then await what they answered, in pluggy's order.

        Every implementation runs even when an earlier one raises (at call or while awaited); the
        first exception in that order is raised once all have finished, so none is left half done.
        """
        pending: list[Awaitable[Any]] = []
        first: BaseException | None = None
        for function, argnames, _ in self._callers[hook_name]:
            try:
                result = (
                    function(**kwargs)
                    if argnames is None
                    else function(**{arg: kwargs[arg] for arg in argnames})
                )
            except Exception as exc:
                first = first or exc
                continue
            if inspect.isawaitable(result):
                pending.append(result)
        if not pending:
            if first is not None:
                raise first
            return
        if len(pending) == 1 and first is None:
            await pending[0]
            return
        for index, awaitable in enumerate(pending):
            try:
                await awaitable
            except Exception as exc:
                first = first or exc
            except BaseException:  # cancelled: the rest will never be awaited
                for left in pending[index + 1 :]:
                    close = getattr(left, "close", None)
                    if close is not None:
                        close()
                raise
        if first is not None:
            raise first

    async def call_each(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation; one that fails is logged and the others still run.

        For hooks that release or flush (settlements, shutdown): one faulty plugin must not keep
        another from releasing what it holds.
        """
        for function, argnames, plugin in self._callers[hook_name]:
            try:
                result = (
                    function(**kwargs)
                    if argnames is None
                    else function(**{arg: kwargs[arg] for arg in argnames})
                )
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.error("%s of plugin %s failed: %s: %s", hook_name, plugin, type(exc).__name__, exc)

    def start_each(self, hook_name: str, **kwargs: Any) -> list[tuple[Awaitable[Any], str]]:
        """Call every implementation now; return the awaitables the async ones answered (with their
        plugin's name), for :meth:`finish_each`. A failing call is logged; the others still run.

        Lets the core run background work only when some plugin has any: implementations that
        answer None cost no task.
        """
        pending: list[tuple[Awaitable[Any], str]] = []
        for function, argnames, plugin in self._callers[hook_name]:
            try:
                result = (
                    function(**kwargs)
                    if argnames is None
                    else function(**{arg: kwargs[arg] for arg in argnames})
                )
            except Exception as exc:
                log.error("%s of plugin %s failed: %s: %s", hook_name, plugin, type(exc).__name__, exc)
                continue
            if inspect.isawaitable(result):
                pending.append((result, plugin))
        return pending

    async def finish_each(self, hook_name: str, pending: list[tuple[Awaitable[Any], str]]) -> None:
        """Await what :meth:`start_each` returned, logging failures and going on."""
        for awaitable, plugin in pending:
            try:
                await awaitable
            except Exception as exc:
                log.error("%s of plugin %s failed: %s: %s", hook_name, plugin, type(exc).__name__, exc)

    async def first_result(self, hook_name: str, **kwargs: Any) -> Any:
        """Call implementations in pluggy's order until one answers something other than None."""
        for function, argnames, _ in self._callers[hook_name]:
            result = (
                function(**kwargs) if argnames is None else function(**{arg: kwargs[arg] for arg in argnames})
            )
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                return result
        return None

    # --- introspection -----------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Name, version and implemented hooks of every loaded plugin, sorted by name."""
        versions = {id(plugin): dist.version for plugin, dist in self.pm.list_plugin_distinfo()}
        out = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            callers = self.pm.get_hookcallers(plugin) or []
            out.append(
                {
                    "name": name,
                    "version": versions.get(id(plugin)),
                    "hooks": sorted(caller.name for caller in callers),
                }
            )
        return sorted(out, key=lambda item: item["name"])
