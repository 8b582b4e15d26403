"""Hook specifications: the whole plugin API of Lockgate.

Two kinds of hooks:

* **Start-up hooks** run once per worker. The ``register_*`` hooks receive a ``register``
  callable and hand named objects to typed registries; operators then pick those objects by name in
  the configuration (a deployment's ``provider``, a model group's ``strategy``, ...).
* **Per-request hooks** run for every request, because several plugins may each have a say:
  authentication, routing and policies. They may be plain functions or ``async def``; the core awaits
  what it gets. No hook runs per streamed chunk.

The core calls the per-request hooks and ``lockgate_startup``/``lockgate_shutdown`` itself, one
implementation at a time in pluggy's order (``tryfirst`` first, ``trylast`` last, otherwise the
plugin registered last first): a "first answer wins" hook stops at the first non-``None`` answer and
later implementations are not called; an exception stops the call. Hook wrappers are not supported on
these hooks.

Implementations may accept any subset of the arguments listed here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from gateway_core.balancing import Balancer
    from gateway_core.commands import Command
    from gateway_core.dlp.filter import DlpFilter
    from gateway_core.gateway import Gateway
    from gateway_core.providers import Provider
    from gateway_core.routes import ExtraRoute
    from gateway_core.routing import ModelGroup
    from gateway_core.types import Principal, RequestContext

hookspec = pluggy.HookspecMarker("lockgate")
hookimpl = pluggy.HookimplMarker("lockgate")


# --- start-up: registration ---------------------------------------------------------------------


@hookspec
def lockgate_register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    """Register provider classes by name.

    Runs once at start-up. ``register(name, cls)`` takes a :class:`~gateway_core.Provider` subclass;
    deployments select it with ``provider: name``. A name registered twice is a start-up error.
    """


@hookspec
def lockgate_register_balancers(register: Callable[[str, type[Balancer]], None]) -> None:
    """Register load-balancing strategies by name.

    Runs once at start-up. ``register(name, cls)`` takes a :class:`~gateway_core.Balancer` subclass;
    a model group selects it with ``strategy: name``.
    """


@hookspec
def lockgate_register_dlp_filters(register: Callable[[str, type[DlpFilter]], None]) -> None:
    """Register data-loss-prevention filters by name.

    Runs once at start-up. ``register(name, cls)`` takes a :class:`~gateway_core.DlpFilter` subclass.
    """


@hookspec
def lockgate_register_routes(register: Callable[[ExtraRoute], None]) -> None:
    """Add HTTP routes to the gateway.

    Runs once at start-up. ``register(ExtraRoute(path, endpoint, methods))``; the endpoint is a
    Starlette endpoint ``async def endpoint(request) -> Response``. Paths must not shadow core routes.
    """


@hookspec
def lockgate_register_commands(register: Callable[[Command], None]) -> None:
    """Add sub-commands to the ``lockgate`` command line.

    Runs once when the CLI starts. ``register(Command(name, help, run, add_arguments))``.
    """


# --- start-up: life cycle ------------------------------------------------------------------------


@hookspec
def lockgate_startup(gateway: Gateway) -> Awaitable[None] | None:
    """Prepare the plugin for serving; may be ``async``.

    Runs once per worker after the registries are filled and before the first request. Read and
    validate your options here with ``gateway.config.plugin_config(NAME, Model)``: a
    :class:`~gateway_core.ConfigError` raised here stops start-up with its message.
    """


@hookspec
def lockgate_shutdown(gateway: Gateway) -> Awaitable[None] | None:
    """Flush and close what the plugin holds; may be ``async``. Runs once per worker at shutdown."""


# --- per request -----------------------------------------------------------------------------------


@hookspec
def lockgate_authenticate(
    ctx: RequestContext, credential: str | None
) -> Principal | Awaitable[Principal | None] | None:
    """Identify the caller.

    Runs per request before the body is read; ``ctx.gateway`` reaches the gateway. ``credential``
    is the API key from ``Authorization: Bearer``, ``X-API-Key`` or ``x-api-key`` (``None`` when
    absent). Return a
    :class:`~gateway_core.Principal` to accept, ``None`` to let other plugins decide, or raise a
    :class:`~gateway_core.GatewayError` (401/403) to reject. The first non-``None`` answer wins;
    when every plugin answers ``None`` the request gets 401.
    """


@hookspec
def lockgate_route(ctx: RequestContext, model: str) -> ModelGroup | Awaitable[ModelGroup | None] | None:
    """Resolve the requested model name to a model group.

    Runs per request after authentication. Return the :class:`~gateway_core.ModelGroup` whose
    deployments may serve ``model``, or ``None`` to let other plugins decide. The first non-``None``
    answer wins; when none answers the request gets 404 ``model_not_found``. The built-in
    ``config_routes`` plugin answers last from the configured models and aliases.
    """


@hookspec
def lockgate_policy_check(ctx: RequestContext) -> Awaitable[None] | None:
    """Admit or reject a request before the provider is called.

    Runs per request for every policy plugin, after routing (``ctx.principal``, ``ctx.group`` and
    ``ctx.body`` are set). Raise :class:`~gateway_core.GatewayError` (e.g. 429 with a
    ``Retry-After`` header) to reject. Reserve what you need in ``ctx.state[YOUR_NAME]``.

    Every plugin's check is called before any answer is awaited (then in hook order), so all run even
    when one rejects, and the first rejection in hook order answers. Counter takes started in the
    synchronous part (``Reservation.take_soon``) share one Redis round trip with the other policies'.
    """


@hookspec
def lockgate_policy_settle(ctx: RequestContext) -> Awaitable[None] | None:
    """Settle a request after it finished: success, upstream failure or client cancel.

    Runs per request for every policy plugin once the request reached the policy stage, also when a
    policy rejected it: release only what your plugin reserved in ``ctx.state``. ``ctx.status``,
    ``ctx.usage`` (may be ``None``), ``ctx.deployment`` and ``ctx.error_type`` tell what happened.
    Exceptions are logged and never reach the client.
    """
