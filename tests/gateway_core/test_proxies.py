"""Outbound proxies: calls go through a deployment's proxy, a dead one spills to the next, secrets stay out.

A tiny HTTP forward proxy (absolute-form requests and CONNECT) on 127.0.0.1 records what passes
through it; a port that refuses connections stands for a dead proxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gateway_core import ConfigError, Gateway, parse_config
from gateway_core.proxies import ProxyPool
from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI

BODY = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
#: Longest a proxied exchange may take before the tiny proxy drops it.
EXCHANGE_SECONDS = 10.0


@dataclass(frozen=True)
class Passage:
    """One request the proxy forwarded."""

    method: str
    target: str
    proxy_authorization: str | None


class TinyProxy:
    """An HTTP forward proxy on 127.0.0.1, in a thread of its own; one exchange per connection."""

    def __init__(self) -> None:
        self.passages: list[Passage] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tiny-proxy", daemon=True)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TinyProxy:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            async with server:
                await self._stop.wait()

        asyncio.run(main())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(EXCHANGE_SECONDS):
                await self._exchange(reader, writer)
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        method, target, version = request_line.split(" ")
        headers = [line for line in header_lines if line]
        authorization = next(
            (
                line.split(":", 1)[1].strip()
                for line in headers
                if line.lower().startswith("proxy-authorization:")
            ),
            None,
        )
        with self._lock:
            self.passages.append(Passage(method, target, authorization))
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            parts = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            kept = [
                line
                for line in headers
                if not line.lower().startswith(("proxy-", "connection:", "keep-alive:"))
            ]
            forwarded = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
            up_writer.write(forwarded.encode("latin-1"))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()

    def targets(self) -> list[str]:
        with self._lock:
            return [passage.target for passage in self.passages]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def proxy() -> Iterator[TinyProxy]:
    with TinyProxy() as server:
        yield server


def deployment(upstream: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "base_url": upstream.base_url,
        "api_key": upstream.api_key,
        "model": "gpt-4o-mini",
        **extra,
    }


def ask(server: GatewayServer, count: int, model: str = "gpt") -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as client:
        return [client.post("/chat/completions", json={**BODY, "model": model}) for _ in range(count)]


def test_calls_go_through_the_proxy(upstream: FakeOpenAI, proxy: TinyProxy) -> None:
    config = {"models": {"gpt": {"deployments": [deployment(upstream, proxy=proxy.url)]}}}
    with GatewayServer(config) as server:
        answers = ask(server, 2)
    assert [answer.status_code for answer in answers] == [200, 200]
    assert proxy.targets() == [f"{upstream.base_url}/chat/completions"] * 2


def test_a_dead_first_proxy_spills_to_the_next(
    upstream: FakeOpenAI, proxy: TinyProxy, refused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://gatekeeper:hunter2-secret@127.0.0.1:{refused_port}"
    config = {"models": {"gpt": {"deployments": [deployment(upstream, proxies=[dead, proxy.url])]}}}
    with caplog.at_level(logging.WARNING, logger="lockgate.proxies"), GatewayServer(config) as server:
        answers = ask(server, 3)
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert len(proxy.targets()) == 3
    messages = [record.getMessage() for record in caplog.records if record.name == "lockgate.proxies"]
    assert len(messages) == 1  # the dead proxy is skipped while it cools down, not tried each time
    assert f"gatekeeper:***@127.0.0.1:{refused_port}" in messages[0]
    assert "hunter2-secret" not in caplog.text


def test_proxy_credentials_reach_the_proxy(upstream: FakeOpenAI, proxy: TinyProxy) -> None:
    with_auth = proxy.url.replace("http://", "http://relay:pass-word@")
    config = {"models": {"gpt": {"deployments": [deployment(upstream, proxy=with_auth)]}}}
    with GatewayServer(config) as server:
        assert ask(server, 1)[0].status_code == 200
    expected = "Basic " + base64.b64encode(b"relay:pass-word").decode()
    assert proxy.passages[0].proxy_authorization == expected


def test_every_proxy_dead_is_a_502(upstream: FakeOpenAI, refused_port: int) -> None:
    dead = f"http://127.0.0.1:{refused_port}"
    config = {"models": {"gpt": {"deployments": [deployment(upstream, proxies=[dead, dead + "/"])]}}}
    with GatewayServer(config) as server:
        answer = ask(server, 1)[0]
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_unreachable"


def test_a_proxy_pool_is_shared_by_the_deployments_naming_it(
    upstream: FakeOpenAI, proxy: TinyProxy, refused_port: int
) -> None:
    dead = f"http://127.0.0.1:{refused_port}"
    config = {
        "proxy_pools": {"egress": [dead, proxy.url]},
        "models": {
            "a": {"deployments": [deployment(upstream, proxy_pool="egress")]},
            "b": {"deployments": [deployment(upstream, proxy_pool="egress")]},
        },
    }
    with GatewayServer(config) as server:
        assert [answer.status_code for answer in ask(server, 1, "a")] == [200]
        pool = server.gateway.models["b"].deployments[0].provider.proxies
        assert pool is server.gateway.models["a"].deployments[0].provider.proxies
        assert pool is not None and pool.current() == proxy.url  # b knows the dead one is cooling down
        assert [answer.status_code for answer in ask(server, 1, "b")] == [200]
    assert len(proxy.targets()) == 2


def test_a_failed_proxy_is_tried_again_after_its_cooldown() -> None:
    pool = ProxyPool(["http://first:1", "http://second:2"], cooldown=0.05)
    assert pool.current() == "http://first:1"
    pool.failed("http://first:1")
    assert pool.current() == "http://second:2"
    pool.failed("http://second:2")
    assert pool.current() == "http://first:1"  # both down: the one back soonest
    pool.failed("http://first:1")
    assert pool.current() == "http://second:2"
    time.sleep(0.06)
    assert pool.current() == "http://first:1"  # back first once its cooldown is over
    assert pool.describe() == ["http://first:1", "http://second:2"]


@pytest.mark.parametrize(
    ("extra", "top", "message"),
    [
        (
            {"proxy_pool": "nowhere"},
            {},
            "models.gpt.deployments[0].proxy_pool: no proxy pool is named 'nowhere'",
        ),
        ({"proxy": "http://a:1", "proxies": ["http://b:2"]}, {}, "set only one of proxy, proxies"),
        ({}, {"proxy_pools": {"empty": []}}, "proxy_pools.empty"),
    ],
)
def test_bad_proxy_settings_fail_start_up(extra: dict[str, Any], top: dict[str, Any], message: str) -> None:
    data = {**top, "models": {"gpt": {"deployments": [{"provider": "mock", **extra}]}}}
    with pytest.raises(ConfigError) as caught:
        Gateway(parse_config(data))
    assert message in str(caught.value)
