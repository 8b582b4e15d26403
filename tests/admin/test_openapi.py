"""The OpenAPI document, Swagger UI (served locally), the generated reference, and when the API is off."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from gateway_core.admin import OPERATIONS
from gateway_core.admin.openapi import build_spec
from gateway_core.admin.reference import render
from gateway_core.app import create_app
from gateway_core.config import parse_config
from gateway_core.errors import ConfigError
from gateway_core.testing import GatewayServer
from tests.admin.conftest import JWT_SECRET

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "admin-api.md"


@pytest.fixture(scope="module")
def plain() -> Iterator[tuple[GatewayServer, httpx.Client]]:
    """A gateway without a database: the admin API is off, its documentation is still served."""
    config = {"models": {"mock": {"deployments": [{"provider": "mock"}]}}}
    with GatewayServer(config) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield server, client


def test_the_reference_is_generated_from_the_current_spec() -> None:
    expected = render(build_spec(OPERATIONS))
    assert REFERENCE.read_text(encoding="utf-8") == expected, (
        "docs/admin-api.md is stale: run `python -m gateway_core.admin.reference > docs/admin-api.md`"
    )


def test_the_document_describes_every_operation(plain: tuple[GatewayServer, httpx.Client]) -> None:
    _, client = plain
    response = client.get("/admin/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec == build_spec(OPERATIONS)
    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert spec["security"] == [{"bearerAuth": []}]
    for op in OPERATIONS:
        entry = spec["paths"]["/admin/api" + op.path][op.method.lower()]
        assert entry["operationId"] == op.operation_id
        if op.role is None:
            assert entry["security"] == []
        else:
            assert "security" not in entry  # the document-wide bearer token
            assert {"401", "403"} <= set(entry["responses"])
        if op.body is not None:
            ref = entry["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[-1] in spec["components"]["schemas"]
        if op.response is not None:
            ref = entry["responses"][str(op.status)]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[-1] in spec["components"]["schemas"]
    # Valid against the OpenAPI 3.1 meta-schema (the copy schemathesis ships), and loadable by it.
    OPENAPI_31_VALIDATOR.validate(spec)
    loaded = schemathesis.openapi.from_dict(spec)
    assert len(list(loaded.get_all_operations())) == len(OPERATIONS)


def test_secrets_are_write_only_in_the_document() -> None:
    schemas: dict[str, Any] = build_spec(OPERATIONS)["components"]["schemas"]
    assert "secret" in schemas["CreatedKey"]["properties"]
    assert "secret" not in schemas["Key"]["properties"]
    for name in ("Deployment", "User", "Key", "Organization"):
        assert not {"api_key", "api_key_encrypted", "password", "password_hash", "digest"} & set(
            schemas[name]["properties"]
        )
    assert "has_api_key" in schemas["Deployment"]["properties"]


def test_swagger_ui_is_served_from_the_gateway(plain: tuple[GatewayServer, httpx.Client]) -> None:
    _, client = plain
    page = client.get("/admin/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and all(url.startswith("/admin/") for url in urls), urls
    init = client.get("/admin/docs/init.js")
    assert init.status_code == 200
    assert re.findall(r'url: "([^"]+)"', init.text) == ["/admin/openapi.json"]
    assert "http" not in init.text
    for url in [*urls, "/admin/docs/assets/swagger-ui-bundle.js"]:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100
    assert client.get("/admin/docs/assets/no-such-file.js").status_code == 404


def test_without_a_database_the_admin_api_is_off(plain: tuple[GatewayServer, httpx.Client]) -> None:
    _, client = plain
    response = client.post("/admin/api/auth/login", json={"email": "a@b.co", "password": "x"})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "admin_api_disabled" and "database" in error["message"]
    assert client.get("/admin/api/users").status_code == 503


def test_without_a_jwt_secret_the_admin_api_is_off_and_says_why() -> None:
    config = {
        "database": {"url": "sqlite://:memory:"},
        "models": {"mock": {"deployments": [{"provider": "mock"}]}},
    }
    with GatewayServer(config) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.get("/admin/api/auth/me")
        assert response.status_code == 503
        assert "admin.jwt_secret" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"database": {"url": "sqlite://:memory:"}, "admin": {"jwt_secret": "too-short"}},
            "admin.jwt_secret",
        ),
        ({"admin": {"jwt_secret": JWT_SECRET}}, "no `database` section"),
    ],
)
def test_a_half_configured_admin_api_stops_start_up(section: dict[str, Any], message: str) -> None:
    config = parse_config({"models": {"mock": {"deployments": [{"provider": "mock"}]}}, **section})
    with pytest.raises(ConfigError, match=re.escape(message)):
        create_app(config)
