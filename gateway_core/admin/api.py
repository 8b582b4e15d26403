"""How an admin API operation runs: token, role and organization checks, body and query parsing.

Each operation is declared once as an :class:`Operation`; the same declaration builds the Starlette
route, the OpenAPI entry and the reference documentation, and the tests read it to check every route
for authentication and roles. Handlers receive a :class:`Call` and return a pydantic model (or
``None`` for 204).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from tortoise.exceptions import IntegrityError
from tortoise.exceptions import ValidationError as StorageLimit

from gateway_core.errors import GatewayError, bad_request
from gateway_core.request_body import REQUEST_TIMEOUT, discard_body, parse_json_object, read_body
from gateway_core.store import models
from gateway_core.store.keys import notify_keys_changed
from gateway_core.store.models import Role

if TYPE_CHECKING:
    from gateway_core.admin.app import AdminApi
    from gateway_core.admin.schemas import PageQuery
    from gateway_core.gateway import Gateway

log = logging.getLogger("lockgate.admin")

_RANK = {Role.READ: 0, Role.WRITE: 1, Role.ADMIN: 2}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

Handler = Callable[["Call"], Awaitable[BaseModel | None]]


@dataclass(frozen=True, slots=True)
class Operation:
    """One route of the admin API (path relative to ``/admin/api``)."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    #: The least role that may call it; ``None`` for the routes that need no token (login, refresh).
    role: Role | None = Role.READ
    #: False for global resources (deployments, routing rules): users bound to an organization are refused.
    scoped: bool = True
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    description: str = ""
    #: Error statuses besides the ones every operation can answer (400, 401, 403, 413, 415).
    errors: tuple[int, ...] = ()
    #: JSON schemas of the path parameters that are not UUIDs, by name.
    path_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


# --- errors ---------------------------------------------------------------------------------------------


def forbidden(message: str, *, param: str | None = None) -> GatewayError:
    return GatewayError(403, message, type="permission_error", code="forbidden", param=param)


def not_found(what: str) -> GatewayError:
    return GatewayError(404, f"No {what} has that id.", code="not_found")


def conflict(message: str, *, param: str | None = None) -> GatewayError:
    return GatewayError(409, message, code="conflict", param=param)


def unprocessable(message: str, *, param: str | None = None) -> GatewayError:
    """A 422: a well-formed request the current state refuses (an id that names nothing, an unknown
    provider or model, a date in the past); 400 is for a request the OpenAPI document already refuses."""
    return GatewayError(422, message, param=param, code="invalid_value")


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def invalid(exc: ValidationError, where: str) -> GatewayError:
    """A 400 naming the first invalid field (and listing up to five)."""
    errors = exc.errors(include_url=False)
    parts = []
    for error in errors[:5]:
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{_dotted(error['loc']) or where}: {message}")
    first = errors[0]
    code = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter"}.get(
        first["type"], "invalid_value"
    )
    return bad_request(
        f"Invalid {where}: " + "; ".join(parts), param=_dotted(first["loc"]) or None, code=code
    )


def _reject_nul(value: Any, path: str) -> None:
    """Text with NUL characters cannot be stored (PostgreSQL refuses it): a 400 naming the field."""
    if isinstance(value, str):
        if "\x00" in value:
            raise bad_request(f"{path or 'body'}: must not contain NUL characters", param=path or None)
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key, path)
            _reject_nul(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_nul(item, f"{path}[{index}]")


# --- who is calling --------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Caller:
    """The logged-in user of one request, with the organizations they may act in."""

    user: models.User
    _orgs: frozenset[uuid.UUID] | None = field(default=None, init=False)

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(str(self.user.id))

    @property
    def role(self) -> Role:
        return Role(self.user.role)

    @property
    def org_id(self) -> uuid.UUID | None:
        org_id = self.user.org_id  # type: ignore[attr-defined]
        return uuid.UUID(str(org_id)) if org_id else None

    @property
    def scoped(self) -> bool:
        """Bound to an organization: acts only within it and its descendants."""
        return self.org_id is not None

    async def orgs(self) -> frozenset[uuid.UUID] | None:
        """The organizations this user may act in; ``None`` for every organization."""
        root = self.org_id
        if root is None:
            return None
        if self._orgs is None:
            self._orgs = frozenset(await org_subtree(root))
        return self._orgs

    async def may_act_in(self, org_id: uuid.UUID | None) -> bool:
        orgs = await self.orgs()
        return orgs is None or (org_id is not None and org_id in orgs)

    async def require_org(self, org_id: uuid.UUID | None, param: str) -> None:
        """403 unless ``org_id`` is within this user's organizations."""
        if not await self.may_act_in(org_id):
            raise forbidden("You can act only within your organization and its descendants.", param=param)


async def org_parents() -> dict[uuid.UUID, uuid.UUID | None]:
    """Every organization's parent, by organization id."""
    rows = await models.Organization.all().values_list("id", "parent_id")
    return {_uuid(org_id): (_uuid(parent) if parent else None) for org_id, parent in rows}


async def org_subtree(root: uuid.UUID) -> set[uuid.UUID]:
    """``root`` and all its descendants."""
    children: dict[uuid.UUID | None, list[uuid.UUID]] = defaultdict(list)
    for org_id, parent in (await org_parents()).items():
        children[parent].append(org_id)
    found = {root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


# --- one call ------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Call:
    """What a handler gets: the request, the caller, the parsed body and query."""

    api: AdminApi
    request: Request
    caller: Caller | None
    body: Any = None
    query: Any = None

    @property
    def gateway(self) -> Gateway:
        return self.api.gateway

    @property
    def user(self) -> Caller:
        assert self.caller is not None, "only operations without a role have no caller"
        return self.caller

    def path_id(self, name: str = "id") -> uuid.UUID:
        """The path parameter ``name`` as a UUID; an id that is not one matches nothing (404)."""
        raw = self.request.path_params[name]
        if isinstance(raw, uuid.UUID):  # the route matched it as one
            return raw
        try:
            return uuid.UUID(raw)
        except ValueError:
            raise GatewayError(404, "No such item: ids are UUIDs.", code="not_found") from None

    async def publish(self, channel: str, message: Mapping[str, Any]) -> None:
        """Announce a change to every gateway; a failure is logged, the change stands."""
        events = getattr(self.gateway, "events", None)
        if events is None:
            return
        try:
            await events.publish(channel, dict(message))
        except Exception as exc:
            log.warning("could not publish on %s: %s: %s", channel, type(exc).__name__, exc)

    async def keys_changed(
        self,
        *,
        key_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        org_id: uuid.UUID | None = None,
    ) -> None:
        """Tell every gateway to drop the cached keys a change affects (see ``notify_keys_changed``)."""
        try:
            await notify_keys_changed(
                getattr(self.gateway, "events", None), key_id=key_id, user_id=user_id, org_id=org_id
            )
        except Exception as exc:
            log.warning("could not announce a key change: %s: %s", type(exc).__name__, exc)


def endpoint(api: AdminApi, op: Operation) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of one operation."""

    async def run(request: Request) -> Response:
        body_read = False
        try:
            caller = await api.authenticate(request) if op.role is not None else None
            if caller is not None:
                _check_role(op, caller)
            query = _parse_query(op.query, request.query_params) if op.query is not None else None
            body = None
            if op.body is not None:
                raw = await read_body(request.receive, request.headers, api.body_limit, api.body_pace)
                body_read = True
                data = parse_json_object(raw, api.max_json_depth)
                _reject_nul(data, "")
                try:
                    # Strict: JSON types as documented (no `0` for `false`, no number for a date).
                    body = op.body.model_validate_json(raw, strict=True)
                except ValidationError as exc:
                    raise invalid(exc, "request body") from None
        except GatewayError as error:
            if not body_read and error.status != REQUEST_TIMEOUT and request.method in _BODY_METHODS:
                await discard_body(request.receive, max(api.body_limit, 1 << 20))
            raise
        call = Call(api, request, caller, body, query)
        try:
            result = await op.handler(call)
        except IntegrityError as exc:
            log.info("admin %s %s: integrity error: %s", op.method, op.path, exc)
            raise conflict("The change conflicts with existing records.") from None
        except StorageLimit as exc:  # a limit of the database the body schema missed: still the caller's
            field = str(exc).partition(":")[0].strip() or None
            raise bad_request(f"Invalid request: {exc}", param=field, code="invalid_value") from None
        if result is None:
            return Response(status_code=204)
        return Response(
            orjson.dumps(result.model_dump(mode="json")),
            status_code=op.status,
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    run.__name__ = op.operation_id
    return run


def _check_role(op: Operation, caller: Caller) -> None:
    assert op.role is not None
    if _RANK[caller.role] < _RANK[op.role]:
        raise forbidden(f"This needs the `{op.role}` role or higher; you have `{caller.role}`.")
    if not op.scoped and caller.scoped:
        raise forbidden(
            f"{op.tag.capitalize()} are global: only users not bound to an organization may manage them."
        )


def _parse_query(model: type[BaseModel], params: Mapping[str, str]) -> BaseModel:
    names = {field.alias or name for name, field in model.model_fields.items()}  # ``from`` is an alias
    for name in params:
        if name not in names:  # a misspelt parameter is refused, as a misspelt body field is
            raise bad_request(
                f"Unknown query parameter `{name}`; this operation takes: {', '.join(sorted(names))}.",
                param=name,
                code="unknown_parameter",
            )
    data = dict(params)
    _reject_nul(data, "")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc, "query parameter") from None


async def fetch_page(query: Any, page: PageQuery, *order: str) -> tuple[list[Any], dict[str, Any]]:
    """One page of ``query`` in ``order``, and the paging fields of the listing (``total``, ...)."""
    total = await query.count()
    rows = list(await query.order_by(*order).offset(page.offset).limit(page.limit))
    paging = {
        "total": total,
        "limit": page.limit,
        "offset": page.offset,
        "has_more": page.offset + len(rows) < total,
    }
    return rows, paging
