"""Deployments managed in the database reach only public addresses, unless the operator allows more.

No test sends anything to an address other than 127.0.0.1: refusals of private and metadata addresses
are checked as validation errors, and the connect-time guard with ``localhost`` (a name that resolves
to 127.0.0.1) in front of a fake upstream listening on 127.0.0.1, which records every request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from gateway_core.config import parse_config
from gateway_core.errors import ConfigError
from gateway_core.testing import GatewayServer
from tests.admin.conftest import ROOT_EMAIL, ROOT_PASSWORD, Admin, Backend, admin_config
from tests.fakes import FakeOpenAI

SECRETS_KEY = Fernet.generate_key().decode()

REFUSED_BASE_URLS = [
    "http://127.0.0.1:6391",  # Redis on loopback
    "http://[::1]:5432",  # PostgreSQL on IPv6 loopback
    "http://[::ffff:127.0.0.1]:6379",  # loopback written as an IPv4-mapped IPv6 address
    "http://0.0.0.0:8080",
    "http://10.1.2.3/v1",
    "http://172.16.0.1/v1",
    "http://192.168.1.10/v1",
    "http://100.64.0.1/v1",
    "http://[fd12:3456::1]/v1",  # ULA
    "http://169.254.169.254/latest/meta-data/",  # AWS, GCP, Azure metadata
    "http://[fd00:ec2::254]/latest/meta-data/",  # AWS metadata over IPv6
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://[fe80::1]/v1",
    "http://224.0.0.1/v1",
    "http://240.0.0.1/v1",
]
BAD_SCHEMES = [
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "ftp://example.com/",
    "example.com/v1",
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as upstream:
        yield upstream


def _gateway(backend: Backend, allowed: list[str], **extra: Any) -> GatewayServer:
    config = admin_config(backend.url, secrets_key=SECRETS_KEY, **extra)
    config["admin"]["allowed_upstreams"] = allowed
    return GatewayServer(config)


def _logged_in(server: GatewayServer, backend: Backend, client: httpx.Client) -> Admin:
    state = Admin(server, backend, client)
    state.tokens["root"] = state.login(ROOT_EMAIL, ROOT_PASSWORD)["access_token"]
    return state


@pytest.fixture(scope="module")
def guarded(backend: Backend) -> Iterator[Admin]:
    """A gateway with the default guard (no allow-list)."""
    with _gateway(backend, allowed=[]) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield _logged_in(server, backend, client)


def _chat(admin: Admin, model: str) -> httpx.Response:
    return admin.client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {admin.server.api_key}"},
        json={"model": model, "messages": [{"role": "user", "content": "ping"}]},
    )


@pytest.mark.parametrize("base_url", REFUSED_BASE_URLS)
def test_private_and_metadata_addresses_are_refused_as_base_url(
    guarded: Admin, fake: FakeOpenAI, base_url: str
) -> None:
    body = {"model_name": "guarded", "provider": "openai", "api_key": fake.api_key, "base_url": base_url}
    response = guarded.post("/deployments", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "base_url"
    created = guarded.post("/deployments", json={**body, "base_url": "https://api.example.com/v1"})
    assert created.status_code == 201, created.text
    patched = guarded.patch(f"/deployments/{created.json()['id']}", json={"base_url": base_url})
    assert patched.status_code == 400 and patched.json()["error"]["param"] == "base_url", patched.text
    assert guarded.delete(f"/deployments/{created.json()['id']}").status_code == 204


@pytest.mark.parametrize("base_url", BAD_SCHEMES)
def test_only_http_and_https_urls_are_accepted(guarded: Admin, base_url: str) -> None:
    response = guarded.post(
        "/deployments", json={"model_name": "m", "provider": "mock", "base_url": base_url}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "base_url"


def test_proxies_are_checked_too(guarded: Admin) -> None:
    for fields, param in (
        ({"proxy": "http://127.0.0.1:3128"}, "proxy"),
        ({"proxies": ["http://proxy.example.com:3128", "http://[::1]:3128"]}, "proxies[1]"),
        ({"proxy": "socks5://proxy.example.com:1080"}, "proxy"),
    ):
        response = guarded.post("/deployments", json={"model_name": "m", "provider": "mock", **fields})
        assert response.status_code == 400, (fields, response.text)
        assert response.json()["error"]["param"] == param, (fields, response.text)


def test_a_name_resolving_to_loopback_is_refused_when_connecting(guarded: Admin, fake: FakeOpenAI) -> None:
    fake.reset()
    port = fake.base_url.rsplit(":", 1)[1].split("/")[0]
    body = {
        "model_name": "via-localhost",
        "upstream_model": "gpt-4o-mini",
        "provider": "openai",
        "api_key": fake.api_key,
        "base_url": f"http://localhost:{port}/v1",
        "health_check": False,
    }
    created = guarded.post("/deployments", json=body)
    assert created.status_code == 201, created.text  # a name: checked where it resolves, when connecting
    response = _chat(guarded, "via-localhost")
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert fake.requests == []  # the guard refused the connection: nothing reached the upstream
    assert guarded.delete(f"/deployments/{created.json()['id']}").status_code == 204


def test_the_allow_list_lets_a_private_upstream_through(backend: Backend, fake: FakeOpenAI) -> None:
    fake.reset()
    port = fake.base_url.rsplit(":", 1)[1].split("/")[0]
    with (
        _gateway(backend, allowed=["127.0.0.0/8"]) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        allowed = _logged_in(server, backend, client)
        ids = []
        for model, base_url in (("lan-name", f"http://localhost:{port}/v1"), ("lan-ip", fake.base_url)):
            body = {
                "model_name": model,
                "upstream_model": "gpt-4o-mini",
                "provider": "openai",
                "api_key": fake.api_key,
                "base_url": base_url,
            }
            created = allowed.post("/deployments", json={**body, "health_check": False})
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
            response = _chat(allowed, model)
            assert response.status_code == 200, response.text
        assert len(fake.requests) == 2
        # Still refused: what the allow-list does not name.
        refused = allowed.post(
            "/deployments",
            json={"model_name": "m", "provider": "mock", "base_url": "http://169.254.169.254/"},
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "base_url"
        for deployment_id in ids:
            assert allowed.delete(f"/deployments/{deployment_id}").status_code == 204


def test_health_checks_go_through_the_guard(backend: Backend, fake: FakeOpenAI) -> None:
    fake.reset()
    port = fake.base_url.rsplit(":", 1)[1].split("/")[0]
    active = {"active": {"enabled": True, "interval": 0.2, "timeout": 2}}
    with (
        _gateway(backend, allowed=[], health=active) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        guarded = _logged_in(server, backend, client)
        body = {
            "model_name": "probed",
            "upstream_model": "gpt-4o-mini",
            "provider": "openai",
            "api_key": fake.api_key,
            "base_url": f"http://localhost:{port}/v1",
            "health_check": True,
        }
        created = guarded.post("/deployments", json=body)
        assert created.status_code == 201, created.text
        check = None
        deadline = time.monotonic() + 15
        while check is None and time.monotonic() < deadline:
            states = guarded.get("/deployments/health").json()["data"]
            check = next((s["last_check"] for s in states if s["id"] == f"db:{created.json()['id']}"), None)
            if check is None:
                time.sleep(0.1)
        assert check is not None, "no active check ran"
        assert check["ok"] is False
        assert fake.requests == []  # the probe was refused before it connected
        assert guarded.delete(f"/deployments/{created.json()['id']}").status_code == 204


class _Redirect(BaseHTTPRequestHandler):
    """Answers every POST with a 307 to ``server.location`` + the path."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(307)
        self.send_header("Location", self.server.location + self.path)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def redirector(fake: FakeOpenAI) -> Iterator[int]:
    """A server on 127.0.0.1 that redirects every POST to the fake upstream's address (a literal)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    server.location = fake.base_url.removesuffix("/v1")  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_redirect_goes_through_the_guard_too(backend: Backend, fake: FakeOpenAI, redirector: int) -> None:
    fake.reset()
    # The allow-list names the host `localhost`, not the address the redirect sends the call to.
    with (
        _gateway(backend, allowed=["localhost"]) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        allowed = _logged_in(server, backend, client)
        body = {
            "model_name": "redirected",
            "upstream_model": "gpt-4o-mini",
            "provider": "openai",
            "api_key": fake.api_key,
            "base_url": f"http://localhost:{redirector}/v1",
            "health_check": False,
        }
        created = allowed.post("/deployments", json=body)
        assert created.status_code == 201, created.text
        response = _chat(allowed, "redirected")
        assert response.status_code == 502, response.text
        assert fake.requests == []
        assert allowed.delete(f"/deployments/{created.json()['id']}").status_code == 204


def test_configured_deployments_are_not_restricted_by_address_but_by_scheme(fake: FakeOpenAI) -> None:
    def config(base_url: str) -> dict[str, Any]:
        deployment = {"provider": "openai", "base_url": base_url, "api_key": fake.api_key}
        return {"models": {"local": {"deployments": [deployment]}}}

    assert parse_config(config(fake.base_url), source="<test>").models["local"].deployments[0].base_url
    for bad in ("file:///etc/passwd", "gopher://127.0.0.1:6379/_"):
        with pytest.raises(ConfigError, match="base_url"):
            parse_config(config(bad), source="<test>")
