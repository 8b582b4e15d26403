"""Where deployments managed in the database may connect: public addresses, and the operator's allow-list.

A user of the admin API who may write deployments must not make the gateway a way into its own network:
a deployment stored in the database whose ``base_url`` (or proxy) is ``http://127.0.0.1:6379`` would
have the gateway POST to Redis, and its health checks probe it. So, for those deployments only:

- At validation, a URL must be ``http``/``https``, and a host that is an IP literal (or a cloud metadata
  name) must be a public address: a 400 naming the field otherwise.
- At connect time, the :class:`GuardedConnector` of their HTTP session checks every address a host name
  resolved to (and every literal) before connecting, so DNS rebinding does not get around the check:
  aiohttp connects only to addresses that went through it, and redirects and proxies open their
  connections through the same connector. It costs nothing per request: connections are pooled, and
  names are resolved (and cached) by aiohttp as before; the check runs on what it resolved.

Refused: loopback, link-local, private (RFC 1918, ULA, shared 100.64/10), unspecified, multicast,
reserved and other non-global addresses, and the cloud metadata endpoints (169.254.169.254,
fd00:ec2::254, metadata.google.internal ...). ``admin.allowed_upstreams`` lists networks (CIDR) and host
names that are let through, such as a vLLM server on the LAN. Deployments in the configuration file are
the operator's own and are not restricted by address.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

if TYPE_CHECKING:
    from gateway_core.config import GatewayConfig

log = logging.getLogger("lockgate.http")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Schemes an upstream or a proxy may have.
SCHEMES = frozenset({"http", "https"})
#: Host names of cloud metadata services (they resolve to link-local addresses inside the cloud).
METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
)
#: Cloud metadata addresses: AWS, GCP, Azure (IPv4 and AWS IPv6), AWS ECS tasks, Alibaba, Oracle.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(text)
    for text in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200", "192.0.0.192")
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UpstreamRefused(OSError):
    """A deployment managed in the database would connect to an address it may not reach."""


def refusal(address: Address) -> str | None:
    """Why ``address`` is not one deployments managed in the database may reach; None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64 else None
        )
        if embedded is not None:
            return refusal(embedded)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for test, what in (
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private or address in _SHARED, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a public address"),
    ):
        if test:
            return what
    return None


class AddressGuard:
    """The check of one worker's database-managed deployments, with the operator's allow-list."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.networks: list[Network] = []
        self.hosts: set[str] = set()
        for entry in allowed:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self.hosts.add(_host_key(entry))

    def address_problem(self, address: Address) -> str | None:
        if any(address in network for network in self.networks):
            return None
        return refusal(address)

    def check(self, host: str, addresses: Sequence[str]) -> None:
        """Raise :class:`UpstreamRefused` unless every address ``host`` resolved to may be reached."""
        if _host_key(host) in self.hosts:
            return
        for text in addresses:
            address = ipaddress.ip_address(text.partition("%")[0])
            problem = self.address_problem(address)
            if problem is not None:
                raise UpstreamRefused(
                    f"{host} is {address}, {problem}: deployments managed in the database may not "
                    "connect there (`admin.allowed_upstreams` lists what they may)"
                )

    def url_problem(self, url: str) -> str | None:
        """Why a deployment managed in the database may not have ``url`` (as base URL or proxy)."""
        problem = scheme_problem(url)
        if problem is not None:
            return problem
        host = URL(url).host or ""
        key = _host_key(host)
        if key in self.hosts:
            return None
        if key in METADATA_HOSTS:
            return f"{host} is a cloud metadata service: not allowed (see `admin.allowed_upstreams`)"
        try:
            address = ipaddress.ip_address(host.strip("[]").partition("%")[0])
        except ValueError:
            return None  # a name: checked when connecting
        problem = self.address_problem(address)
        if problem is not None:
            return f"{host} is {problem}: not allowed (see `admin.allowed_upstreams`)"
        return None


def record_guard(config: GatewayConfig) -> AddressGuard:
    """The guard of a gateway's database-managed deployments: ``admin.allowed_upstreams``, and the
    hosts of the configuration's ``proxy_pools`` (the operator's own proxies)."""
    pool_hosts = [URL(url).host or "" for pool in config.proxy_pools.values() for url in pool]
    return AddressGuard([*config.admin.allowed_upstreams, *filter(None, pool_hosts)])


def scheme_problem(url: str) -> str | None:
    """Why ``url`` cannot be an upstream or proxy URL (not http/https, no host); None if it can."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return "not a valid URL"
    if parsed.scheme.lower() not in SCHEMES:
        return f"must be an http:// or https:// URL, not {parsed.scheme or 'a relative'!r} one"
    if not parsed.host:
        return "must name a host"
    return None


def _host_key(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCP connector that connects only to addresses the :class:`AddressGuard` allows.

    Every connection is opened through ``_resolve_host`` (literal addresses too, and the proxy's
    address when a proxy is used), so the addresses connected to are exactly the ones checked.
    """

    def __init__(self, guard: AddressGuard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> Any:
        results = await super()._resolve_host(host, port, traces=traces)
        try:
            self._guard.check(host, [result["host"] for result in results])
        except UpstreamRefused as exc:
            log.warning("upstream connection refused: %s", exc)
            raise
        return results
