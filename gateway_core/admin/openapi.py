"""The OpenAPI 3.1 document of the admin API, built from the operation table and the pydantic schemas."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway_core import __version__
from gateway_core.admin import schemas
from gateway_core.admin.api import Operation

PREFIX = "/admin/api"
_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"\{(\w+)\}")

_ERRORS = {
    400: "Invalid request: the message names the field (`param`).",
    401: "No token, or a token that is invalid, expired or not an access token.",
    403: "The caller's role or organization does not allow this.",
    404: "No such item (or not visible to the caller).",
    409: "Conflicts with existing records.",
    413: "The request body is too large.",
    415: "The request body is not JSON.",
    422: "Well-formed, but refused by what it refers to (an id that names nothing, an unknown provider or "
    "model, a date in the past); the message names the field (`param`).",
    429: "Too many attempts; see `Retry-After`.",
    503: "The database is unavailable, or the admin API is not enabled.",
}


def access_text(op: Operation) -> str:
    """Who may call an operation, in words."""
    if op.role is None:
        return "No token needed."
    text = "Any logged-in user" if op.role == "read" else f"Role `{op.role}` or higher"
    if not op.scoped:
        text += ", not bound to an organization"
    elif op.role != "read" or op.tag in ("users", "organizations", "keys", "usage", "balances"):
        text += "; organization-bound users act within their organization tree"
    return text + "."


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: a parameter left out is the ``null`` of the model, so drop it."""
    schema = dict(schema)
    options = [option for option in schema.pop("anyOf", ()) if option != {"type": "null"}]
    if len(options) == 1:
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def build_spec(operations: Sequence[Operation]) -> dict[str, Any]:
    """The OpenAPI document (a plain dict, ready for JSON)."""
    wanted: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (schemas.ErrorBody, "serialization")
    ]
    for op in operations:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        if op.query is not None:
            wanted.append((op.query, "validation"))
        if op.response is not None:
            wanted.append((op.response, "serialization"))
    unique = list(dict.fromkeys(wanted))
    refs, top = models_json_schema(unique, ref_template=_REF)
    components: dict[str, Any] = dict(top.get("$defs", {}))
    query_names = set()
    for op in operations:
        if op.query is not None:
            query_names.add(refs[(op.query, "validation")]["$ref"].rsplit("/", 1)[-1])

    def ref(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    error_ref = ref(schemas.ErrorBody, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        path = PREFIX + op.path
        entry: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "description": (op.description + "\n\n" if op.description else "") + access_text(op),
            "tags": [op.tag],
            "x-lockgate-role": str(op.role) if op.role is not None else None,
            "x-lockgate-org-scoped": op.scoped,
        }
        if op.role is None:
            entry["security"] = []
        parameters: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": dict(op.path_params.get(name, {"type": "string", "format": "uuid"})),
            }
            for name in _PATH_PARAM.findall(op.path)
        ]
        if op.query is not None:
            query_schema = components[refs[(op.query, "validation")]["$ref"].rsplit("/", 1)[-1]]
            required = set(query_schema.get("required", ()))
            for name, prop in query_schema.get("properties", {}).items():
                prop = _without_null(prop)
                description = prop.pop("description", None)
                prop.pop("title", None)
                parameter = {"name": name, "in": "query", "required": name in required, "schema": prop}
                if description:
                    parameter["description"] = description
                parameters.append(parameter)
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(op.body, "validation")}},
            }
        responses: dict[str, Any] = {}
        if op.status == 204 or op.response is None:
            responses[str(op.status)] = {"description": "Done; no content."}
        else:
            responses[str(op.status)] = {
                "description": "Created." if op.status == 201 else "OK.",
                "content": {"application/json": {"schema": ref(op.response, "serialization")}},
            }
        codes = {400, 503, *op.errors}
        if op.role is not None:
            codes |= {401, 403}
        else:
            codes.add(401)
        if op.body is not None:
            codes |= {413, 415}
            if op.role is not None:
                codes.add(422)
        for code in sorted(codes):
            responses[str(code)] = {
                "description": _ERRORS[code],
                "content": {"application/json": {"schema": error_ref}},
            }
        entry["responses"] = responses
        paths.setdefault(path, {})[op.method.lower()] = entry
    for name in query_names:  # described as parameters, not as a schema
        if not any(name in str(value) for key, value in components.items() if key != name):
            components.pop(name, None)
    tags = list(dict.fromkeys(op.tag for op in operations))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Lockgate admin API",
            "version": __version__,
            "description": (
                "Manage users, organizations, API keys, deployments, routing rules, balances and "
                "prices of a Lockgate gateway. Log in at `POST /admin/api/auth/login` and send the access token as "
                "`Authorization: Bearer TOKEN`. Errors are OpenAI-shaped: "
                '`{"error": {"message", "type", "param", "code"}}`.'
            ),
        },
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The access token from /admin/api/auth/login or /admin/api/auth/refresh.",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }
