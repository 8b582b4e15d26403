"""The worker's shared upstream HTTP client and the mapping of upstream failures to client errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
import orjson

from gateway_core.address_guard import AddressGuard, GuardedConnector
from gateway_core.config import HttpConfig, TimeoutConfig
from gateway_core.errors import GatewayError, error_payload_from, upstream_error

log = logging.getLogger("lockgate.http")

#: Upstream response headers passed on to the client.
FORWARDED_HEADERS = ("retry-after", "retry-after-ms")


class HttpClient:
    """Owns the one ``aiohttp.ClientSession`` of a worker (keep-alive pooled).

    Created when the worker starts (it needs the running event loop) and closed at shutdown. With a
    ``guard``, it connects only where the guard allows (the session of database-managed deployments,
    see :mod:`gateway_core.address_guard`); ``shared`` is another client's :attr:`shared`, to share it.
    """

    def __init__(
        self,
        config: HttpConfig | None = None,
        *,
        secrets: Iterable[str] = (),
        guard: AddressGuard | None = None,
        shared: dict[str, Any] | None = None,
    ) -> None:
        self.config = config or HttpConfig()
        self.guard = guard
        self._session: aiohttp.ClientSession | None = None
        #: Per-worker objects providers share across deployments, e.g. OAuth token caches per account.
        self.shared: dict[str, Any] = shared if shared is not None else {}
        #: Secrets of the configuration every deployment keeps out of its error messages.
        self.secrets = frozenset(secrets)
        #: Send the current span's ``traceparent`` upstream (set when tracing is on).
        self.propagate = False

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the HTTP client is not started")
        return self._session

    async def start(self) -> None:
        if self._session is not None:
            return
        settings: dict[str, Any] = {
            "limit": self.config.max_connections,
            "limit_per_host": self.config.max_connections_per_host,
            "keepalive_timeout": self.config.keepalive_timeout,
            "ttl_dns_cache": self.config.dns_cache_seconds or None,
            "use_dns_cache": self.config.dns_cache_seconds > 0,
        }
        connector = (
            aiohttp.TCPConnector(**settings)
            if self.guard is None
            else GuardedConnector(self.guard, **settings)
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def client_timeout(config: TimeoutConfig) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=config.total, sock_connect=config.connect, sock_read=config.read)


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out = {name: value for name in FORWARDED_HEADERS if (value := headers.get(name)) is not None}
    upstream_id = headers.get("x-request-id") or headers.get("request-id")
    if upstream_id:
        out["x-upstream-request-id"] = upstream_id
    return out


def error_from_upstream(status: int, body: bytes, headers: Mapping[str, str], provider: str) -> GatewayError:
    """Turn an upstream error answer into the error the client gets.

    Errors caused by the client's request (400, 413, 422) keep their status and the upstream's
    message; a 429 keeps its retry hint, and so does an overloaded upstream (503 or 529 with
    ``retry-after``), answered 503; credential and server problems of the upstream become 502 (the
    client cannot fix them), upstream timeouts 504. Only the message, type, code and param of the
    upstream's error are kept (the provider scrubs its secrets from them).
    """
    payload = error_payload_from(body) or {}
    upstream_message = str(payload.get("message") or "").strip()
    retry = {k: v for k in ("retry-after", "retry-after-ms") if (v := headers.get(k)) is not None}
    if status in (400, 413, 422):
        return GatewayError(
            400 if status == 422 else status,
            upstream_message or f"The upstream provider rejected the request (status {status}).",
            type=str(payload.get("type") or "invalid_request_error"),
            code=_str_or_none(payload.get("code")),
            param=_str_or_none(payload.get("param")),
        )
    if "retry-after" not in retry and "retry-after-ms" in retry:
        with contextlib.suppress(ValueError):
            retry["retry-after"] = str(max(1, round(float(retry["retry-after-ms"]) / 1000)))
    if status == 429:
        return GatewayError(
            429,
            upstream_message or "The upstream provider is rate limiting requests; retry later.",
            type=str(payload.get("type") or "rate_limit_error"),
            code=_str_or_none(payload.get("code")) or "rate_limit_exceeded",
            headers=retry,
        )
    if status in (401, 403):
        log.warning("upstream %s rejected the gateway's credentials (status %s)", provider, status)
        return upstream_error(
            f"The upstream provider {provider!r} rejected the gateway's credentials (status {status}).",
            code="upstream_auth_error",
        )
    if status in (408, 504):
        return upstream_error(
            f"The upstream provider {provider!r} timed out.", status=504, code="upstream_timeout"
        )
    detail = f": {upstream_message}" if upstream_message else ""
    if status in (503, 529) and retry:
        # Overloaded, with a hint of when to come back: honoured like a 429's, and passed on.
        return upstream_error(
            f"The upstream provider {provider!r} is overloaded; retry later{detail}",
            status=503,
            code="upstream_overloaded",
            headers=retry,
        )
    return upstream_error(f"The upstream provider {provider!r} failed with status {status}{detail}")


def error_from_exception(exc: BaseException, provider: str) -> GatewayError:
    """Map a transport failure (timeout, refused or reset connection) to 504 or 502."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return upstream_error(
            f"The upstream provider {provider!r} timed out.", status=504, code="upstream_timeout"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return upstream_error(
            f"Could not connect to the upstream provider {provider!r}.", code="upstream_unreachable"
        )
    return upstream_error(
        f"The connection to the upstream provider {provider!r} failed ({type(exc).__name__}).",
        code="upstream_connection_error",
    )


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


#: Maps an upstream error answer (status, body, headers, provider name) to the client's error.
ErrorDecoder = Callable[[int, bytes, Mapping[str, str], str], GatewayError]


async def post(
    http: HttpClient,
    url: str,
    payload: bytes,
    *,
    headers: Mapping[str, str],
    timeouts: aiohttp.ClientTimeout,
    proxy: str | None,
    provider: str,
    decode_error: ErrorDecoder = error_from_upstream,
) -> aiohttp.ClientResponse:
    """POST to an upstream; return the response when it succeeded (status < 400).

    Transport failures and error answers become the client's :class:`GatewayError`. The caller owns
    the returned response and must read, release or close it.
    """
    if http.propagate:
        from gateway_core.tracing import propagate

        headers = propagate(headers)
    try:
        response = await http.session.post(url, data=payload, headers=headers, timeout=timeouts, proxy=proxy)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise error_from_exception(exc, provider) from None
    if response.status >= 400:
        try:
            body = await response.read()
        except (TimeoutError, aiohttp.ClientError):
            body = b""
        finally:
            response.release()
        error = decode_error(response.status, body, response.headers, provider)
        error.upstream_status = response.status
        raise error
    return response


async def read_json(response: aiohttp.ClientResponse, provider: str) -> tuple[bytes, Any]:
    """Read a whole upstream answer and parse it; failures become 502/504 errors."""
    try:
        body = await response.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        response.close()
        raise error_from_exception(exc, provider) from None
    except BaseException:
        response.close()
        raise
    try:
        return body, orjson.loads(body)
    except orjson.JSONDecodeError:
        raise upstream_error(f"The upstream provider {provider!r} answered with malformed JSON.") from None
