"""Outbound proxies of deployments, used fill-first: the first proxy until it fails to connect.

A deployment's proxies come from ``proxy`` (one), ``proxies`` (its own list) or ``proxy_pool`` (a
top-level ``proxy_pools`` entry, whose state every deployment naming it shares in a worker). A call
goes through the first proxy that is not cooling down; when connecting to it fails (refused,
unreachable, unresolvable), that proxy cools down for :data:`COOLDOWN_SECONDS` and the call is made
again through the next one, so nothing was sent twice. Once its cooldown is over a proxy is tried
again, and being first it takes the traffic back as soon as it works. Proxy URLs may carry
credentials (``http://user:password@host:port``): logs show them redacted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from gateway_core.config import redact_url
from gateway_core.errors import ConfigError

if TYPE_CHECKING:
    from gateway_core.config import DeploymentConfig
    from gateway_core.http import HttpClient

log = logging.getLogger("lockgate.proxies")

#: Seconds a proxy that failed to connect is skipped before it is tried again.
COOLDOWN_SECONDS = 30.0


class ProxyPool:
    """An ordered list of proxies and until when each one is skipped (per worker)."""

    __slots__ = ("_down_until", "cooldown", "name", "urls")

    def __init__(self, urls: Sequence[str], *, name: str = "", cooldown: float = COOLDOWN_SECONDS) -> None:
        if not urls:
            raise ValueError("a proxy pool needs at least one proxy")
        self.urls = tuple(urls)
        self.name = name
        self.cooldown = cooldown
        self._down_until = [0.0] * len(self.urls)

    def __len__(self) -> int:
        return len(self.urls)

    def current(self) -> str:
        """The proxy for the next call: the first one not cooling down, else the one back soonest."""
        down_until = self._down_until
        now = time.monotonic()
        for index, until in enumerate(down_until):
            if until <= now:
                return self.urls[index]
        return self.urls[min(range(len(down_until)), key=down_until.__getitem__)]

    def failed(self, url: str) -> None:
        """Connecting through ``url`` failed: skip it for :attr:`cooldown` seconds."""
        try:
            index = self.urls.index(url)
        except ValueError:
            return
        now = time.monotonic()
        if self._down_until[index] <= now:
            log.warning(
                "proxy %s%s failed to connect; skipped for %.0f s",
                redact_url(url),
                f" of pool {self.name!r}" if self.name else "",
                self.cooldown,
            )
        self._down_until[index] = now + self.cooldown

    def describe(self) -> list[str]:
        """The proxies with their passwords redacted."""
        return [redact_url(url) for url in self.urls]


def register_proxy_pools(http: HttpClient, pools: Mapping[str, Sequence[str]]) -> None:
    """Make the configuration's ``proxy_pools`` known to the worker's deployments (at start-up)."""
    for name, urls in pools.items():
        key = _KEY + name
        pool = http.shared.get(key)
        if not isinstance(pool, ProxyPool) or pool.urls != tuple(urls):
            http.shared[key] = ProxyPool(urls, name=name)


def proxies_of(deployment: DeploymentConfig, http: HttpClient) -> ProxyPool | None:
    """The proxies of ``deployment`` (None: it connects directly); a ``proxy_pool`` is the worker's
    shared pool of that name (:func:`register_proxy_pools`)."""
    if deployment.proxy_pool is not None:
        pool = http.shared.get(_KEY + deployment.proxy_pool)
        if not isinstance(pool, ProxyPool):
            raise ConfigError(f"proxy_pool: no proxy pool is named {deployment.proxy_pool!r}")
        return pool
    if deployment.proxies:
        return ProxyPool(deployment.proxies)
    if deployment.proxy:
        return ProxyPool([deployment.proxy])
    return None


_KEY = "proxy-pool:"
