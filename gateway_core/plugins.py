"""The plugin manager and the typed face the core calls it through.

Default plugins are ordinary entry points of the ``lockgate`` group, found exactly like a third
party's. A plugin disabled in the configuration (``plugins: {name: {enabled: false}}``) or left out of
``LOCKGATE_LOAD_PLUGINS`` is blocked before the entry points load, so it is never imported.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterable
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
                if not self.pm.is_blocked(name):
                    self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"plugin {exc.plugin!r} is invalid: {exc}") from None
        self.known_names = set(available) | {name for name, _ in extra}
        self._refresh()

    def _refresh(self) -> None:
        """Precompute the call order of the hooks the core calls itself (cheaper than pluggy per request)."""
        self._callers: dict[str, list[tuple[Callable[..., Any], tuple[str, ...]]]] = {}
        for name in CALLED_HOOKS:
            callers = []
            # pluggy's order: tryfirst first, trylast last, later registrations before earlier ones.
            for impl in reversed(getattr(self.pm.hook, name).get_hookimpls()):
                if impl.hookwrapper or impl.wrapper:
                    raise ConfigError(f"plugin {impl.plugin_name!r}: {name} does not support wrappers")
                callers.append((impl.function, tuple(impl.argnames)))
            self._callers[name] = callers
        self.has_policies = bool(self._callers["lockgate_policy_check"])
        self.has_settle = bool(self._callers["lockgate_policy_settle"])

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object at run time (tests, embedding applications)."""
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"plugin {exc.plugin!r} is invalid: {exc}") from None
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

    def fill(self, hook_name: str, registry: Registry[Any]) -> None:
        """Call a ``register_*`` hook of every plugin, telling the registry who registers what."""
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            registry.current_plugin = impl.plugin_name
            impl.function(**{arg: registry.register for arg in impl.argnames})
        registry.current_plugin = "?"

    def commands(self) -> list[Command]:
        found: list[Command] = []
        for impl in self.pm.hook.lockgate_register_commands.get_hookimpls():
            impl.function(register=found.append)
        return found

    async def call_all(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of a hook in pluggy's order, awaiting what is awaitable.

        An exception stops the call: later implementations do not run.
        """
        for function, argnames in self._callers[hook_name]:
            result = function(**{arg: kwargs[arg] for arg in argnames})
            if inspect.isawaitable(result):
                await result

    async def first_result(self, hook_name: str, **kwargs: Any) -> Any:
        """Call implementations in pluggy's order until one answers something other than None."""
        for function, argnames in self._callers[hook_name]:
            result = function(**{arg: kwargs[arg] for arg in argnames})
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
