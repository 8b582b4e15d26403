"""The admin API application, mounted by the gateway under ``/admin``.

The admin API is enabled when the configuration has a ``database`` section and ``admin.jwt_secret``.
Without a database there is nothing to manage; without a secret no token could be signed. In both
cases its operations answer 503 naming the missing setting (the OpenAPI document and Swagger UI are
still served), and a start-up log line says so. A ``jwt_secret`` shorter than 32 characters, or one
set without a database, stops start-up with a configuration error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router

from gateway_core.admin import (
    auth,
    billing,
    deployments,
    docs,
    health,
    keys,
    organizations,
    prices,
    routing_rules,
    usage,
    users,
)
from gateway_core.admin.api import Caller, Operation, endpoint
from gateway_core.admin.openapi import PREFIX, build_spec
from gateway_core.admin.tokens import TokenService, invalid_token, missing_token
from gateway_core.errors import ConfigError, GatewayError
from gateway_core.slow_clients import BodyPace
from gateway_core.store import models
from gateway_core.store.database import DatabaseUnavailable, is_outage

if TYPE_CHECKING:
    from gateway_core.gateway import Gateway

log = logging.getLogger("lockgate.admin")
_PATH_PARAM = re.compile(r"\{(\w+)\}")

#: Every operation of the admin API, in the order of the documentation.
OPERATIONS: list[Operation] = [
    *auth.OPERATIONS,
    *users.OPERATIONS,
    *organizations.OPERATIONS,
    *keys.OPERATIONS,
    *health.OPERATIONS,  # before /deployments/{id}, which would take "health" for an id
    *deployments.OPERATIONS,
    *routing_rules.OPERATIONS,
    *usage.OPERATIONS,
    *billing.OPERATIONS,
    *prices.OPERATIONS,
]

MIN_SECRET_LENGTH = 32
#: argon2 hashes and verifications run at once (each takes a large fraction of a second and 64 MiB).
PASSWORD_SLOTS = 2


class AdminApi:
    """The admin API of one gateway: settings, token service, login limiter and routes."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        config = gateway.config
        self.body_limit = config.server.max_body_bytes
        self.body_pace = BodyPace.of(config.server)
        self.max_json_depth = config.server.max_json_depth
        self.limiter = auth.LoginLimiter()
        self.password_slots = asyncio.Semaphore(PASSWORD_SLOTS)
        self._spec: bytes | None = None
        secret_value = config.admin.jwt_secret
        secret = secret_value.get_secret_value() if secret_value is not None else ""
        self.disabled_reason: str | None = None
        if secret and config.database is None:
            raise ConfigError(
                f"{config.source}: admin.jwt_secret is set but there is no `database` section: "
                "the admin API manages what the database holds"
            )
        if secret and len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"{config.source}: admin.jwt_secret: must have at least {MIN_SECRET_LENGTH} characters "
                '(make one with: python -c "import secrets; print(secrets.token_urlsafe(48))")'
            )
        if config.database is None:
            self.disabled_reason = "The admin API is disabled: the configuration has no `database` section."
        elif not secret:
            self.disabled_reason = (
                "The admin API is disabled: set `admin.jwt_secret` in the configuration "
                "(at least 32 random characters) to enable it."
            )
        self._tokens = (
            TokenService(
                secret, config.admin.access_token_minutes * 60, config.admin.refresh_token_days * 86400
            )
            if self.disabled_reason is None
            else None
        )
        events = getattr(gateway, "events", None)
        if self._tokens is not None and events is not None:
            # Refresh tokens exchanged on other gateways (Redis pub/sub): refused here too.
            events.subscribe(auth.TOKENS_CHANNEL, self._on_token_event)

    @property
    def enabled(self) -> bool:
        return self._tokens is not None

    @property
    def token_service(self) -> TokenService:
        assert self._tokens is not None, "the admin API is disabled"
        return self._tokens

    # --- per request ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def database(self) -> Iterator[None]:
        """Make the gateway's database the one the ORM uses, for one admin request."""
        if self.disabled_reason is not None:
            raise GatewayError(503, self.disabled_reason, type="server_error", code="admin_api_disabled")
        database = getattr(self.gateway, "database", None)
        if database is None:
            yield
            return
        with database.activate():
            yield

    async def authenticate(self, request: Request) -> Caller:
        """The active user whose access token the request carries; 401 otherwise."""
        header = request.headers.get("authorization")
        if header is None:
            raise missing_token()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise invalid_token("Send the access token as `Authorization: Bearer TOKEN`.")
        claims = self.token_service.decode(token.strip(), "access")
        user = await models.User.get_or_none(id=claims["sub"])
        if user is None or not user.is_active:
            raise invalid_token("The user of this token no longer exists or is disabled.")
        return Caller(user)

    def _on_token_event(self, message: Mapping[str, Any]) -> None:
        if self._tokens is None:
            return
        try:
            expires = float(message.get("exp") or 0)
        except (TypeError, ValueError):
            return
        if isinstance(message.get("jti"), str):
            self._tokens.used.mark_used(message["jti"], expires)
        if isinstance(message.get("family"), str):
            self._tokens.used.end_family(message["family"], expires)

    # --- routes -----------------------------------------------------------------------------------------

    def spec(self) -> bytes:
        if self._spec is None:
            self._spec = orjson.dumps(build_spec(OPERATIONS))
        return self._spec

    async def openapi(self, request: Request) -> Response:
        return Response(self.spec(), media_type="application/json")

    def routes(self) -> list[BaseRoute]:
        api_prefix = PREFIX.removeprefix("/admin")
        by_path: dict[str, dict[str, Any]] = {}
        for op in OPERATIONS:
            by_path.setdefault(op.path, {})[op.method] = self._endpoint(op)
        # One route per path, so a method it lacks is a 405 whose ``Allow`` names all it has.
        routes: list[BaseRoute] = [
            Route(api_prefix + _typed_path(path), _by_method(endpoints), methods=list(endpoints))
            for path, endpoints in by_path.items()
        ]
        routes += [
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/docs", docs.page, methods=["GET"]),
            Route("/docs/init.js", docs.init_script, methods=["GET"]),
            Mount("/docs/assets", app=docs.assets()),
        ]
        return routes

    def _endpoint(self, op: Operation) -> Any:
        run = endpoint(self, op)

        async def with_database(request: Request) -> Response:
            with self.database():
                try:
                    return await run(request)
                except GatewayError:
                    raise  # a deliberate answer, even when raised while handling a timeout or OSError
                except Exception as exc:
                    if not isinstance(exc, DatabaseUnavailable) and not is_outage(exc):
                        raise
                    database = getattr(self.gateway, "database", None)
                    if database is not None:
                        database.mark_unavailable(exc)
                    raise GatewayError(
                        503,
                        "The database is unavailable; retry shortly.",
                        type="server_error",
                        code="database_unavailable",
                        headers={"Retry-After": "2"},
                    ) from None

        with_database.__name__ = op.operation_id
        return with_database


def _typed_path(path: str) -> str:
    """The route path of an operation: ids are matched by type, so ``/deployments/health`` is no id."""
    params = next((op.path_params for op in OPERATIONS if op.path == path), {})

    def typed(match: re.Match[str]) -> str:
        name = match.group(1)
        schema = params.get(name)
        if schema is None:
            return f"{{{name}:uuid}}"
        return f"{{{name}:int}}" if schema.get("type") == "integer" else match.group(0)

    return _PATH_PARAM.sub(typed, path)


def _by_method(endpoints: Mapping[str, Any]) -> Any:
    """An endpoint answering each method with the operation declared for it."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)  # type: ignore[no-any-return]

    return dispatch


def create_admin_app(gateway: Gateway) -> Router:
    """The ASGI app to mount at ``/admin``; raises ``ConfigError`` for a bad ``admin`` section."""
    api = AdminApi(gateway)
    if api.disabled_reason is not None:
        # Without a database there is nothing to manage; a database without a secret is worth a word.
        level = logging.DEBUG if gateway.config.database is None else logging.WARNING
        log.log(level, "%s", api.disabled_reason)
    router = Router(routes=api.routes())
    router.admin_api = api  # type: ignore[attr-defined]
    return router
