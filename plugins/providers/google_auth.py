"""OAuth2 access tokens for Google service accounts (the JWT-bearer token exchange).

A :class:`ServiceAccountTokens` signs a JWT with the account's private key, exchanges it at the
account's ``token_uri`` for an access token, caches the token and refreshes it five minutes before it
expires, or at once after an upstream refused it (:meth:`ServiceAccountTokens.forget`). Concurrent
requests share one refresh. Tokens and keys never reach logs or errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import jwt
import orjson

from gateway_core import ConfigError, GatewayError, HttpClient
from gateway_core.errors import upstream_error

log = logging.getLogger("lockgate.google_auth")

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Refresh this many seconds before the token expires.
REFRESH_MARGIN = 300.0
ASSERTION_LIFETIME = 3600


def parse_service_account(text: str, source: str) -> dict[str, Any]:
    """Validate a service-account key file's JSON; errors name ``source`` and never echo the key."""
    try:
        info = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ConfigError(f"{source}: not valid JSON") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ConfigError(f'{source}: not a service-account key ("type": "service_account" expected)')
    for field in ("client_email", "private_key"):
        if not info.get(field):
            raise ConfigError(f"{source}: the service-account key has no {field!r}")
    return info


class ServiceAccountTokens:
    """Access tokens of one service account, cached and refreshed before expiry."""

    def __init__(self, info: Mapping[str, Any], http: HttpClient, scope: str = CLOUD_PLATFORM_SCOPE) -> None:
        self.email = str(info["client_email"])
        self._private_key = str(info["private_key"])
        self._key_id = info.get("private_key_id")
        self.token_uri = str(info.get("token_uri") or DEFAULT_TOKEN_URI)
        self.scope = scope
        self.http = http
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh: asyncio.Task[str] | None = None

    @classmethod
    def shared(
        cls, info: Mapping[str, Any], http: HttpClient, scope: str = CLOUD_PLATFORM_SCOPE
    ) -> ServiceAccountTokens:
        """The worker's one token source for this account and scope (deployments share it)."""
        key = f"google-oauth:{info['client_email']}:{scope}"
        source = http.shared.get(key)
        if not isinstance(source, cls):
            source = http.shared[key] = cls(info, http, scope)
        return source

    async def token(self) -> str:
        if self._token is not None and time.time() < self._expires_at - REFRESH_MARGIN:
            return self._token
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.get_running_loop().create_task(self._fetch())
        # shield: one caller going away must not cancel the refresh the others wait for.
        return await asyncio.shield(self._refresh)

    def forget(self, token: str) -> None:
        """Drop ``token`` from the cache (the upstream refused it), so the next call fetches a new one."""
        if token == self._token:
            self._token, self._expires_at = None, 0.0

    def assertion(self, now: int) -> str:
        claims = {
            "iss": self.email,
            "sub": self.email,
            "scope": self.scope,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": self._key_id} if self._key_id else None
        try:
            return jwt.encode(claims, self._private_key, algorithm="RS256", headers=headers)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise upstream_error(
                f"The service-account key of {self.email} cannot sign ({type(exc).__name__}).",
                code="upstream_auth_error",
            ) from None

    async def _fetch(self) -> str:
        now = int(time.time())
        form = {"grant_type": JWT_BEARER, "assertion": self.assertion(now)}
        try:
            async with self.http.session.post(
                self.token_uri, data=form, timeout=aiohttp.ClientTimeout(total=30)
            ) as response:
                body = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("token exchange for %s failed: %s", self.email, type(exc).__name__)
            raise _token_error(self.email) from None
        if status != 200:
            log.warning("token exchange for %s was refused with status %s", self.email, status)
            raise _token_error(self.email)
        try:
            data = orjson.loads(body)
            token = str(data["access_token"])
            lifetime = float(data.get("expires_in", 3600))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise _token_error(self.email) from None
        self._token, self._expires_at = token, now + lifetime
        return token


def _token_error(email: str) -> GatewayError:
    return upstream_error(
        f"Could not obtain an access token for the service account {email}.", code="upstream_auth_error"
    )
