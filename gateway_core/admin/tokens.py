"""Admin API tokens: short-lived access tokens and rotating refresh tokens (JWT, HS256).

Claims: ``sub`` (user id), ``role``, ``org`` (organization id or null), ``type`` (``access`` or
``refresh``), ``iat``, ``exp``, ``jti``, ``iss``; a refresh token also carries ``fam``, the login it
descends from. A refresh token is good for one exchange: using it again is taken as theft and ends
every later refresh token of the same login (the family).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from gateway_core.errors import GatewayError
from gateway_core.store.models import User

ISSUER = "lockgate-admin"
ALGORITHM = "HS256"
TokenType = Literal["access", "refresh"]


def invalid_token(message: str = "The access token is invalid or has expired.") -> GatewayError:
    return GatewayError(
        401,
        message,
        code="invalid_token",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def missing_token() -> GatewayError:
    return GatewayError(
        401,
        "Log in first: send the access token from /admin/api/auth/login as `Authorization: Bearer TOKEN`.",
        code="missing_token",
        headers={"WWW-Authenticate": "Bearer"},
    )


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int


class UsedRefreshTokens:
    """Refresh tokens already exchanged and families ended by a reuse, until they expire.

    Kept in this process; :meth:`mark_used` and :meth:`end_family` are also applied when another
    gateway announces them (see :mod:`gateway_core.admin.app`).
    """

    def __init__(self) -> None:
        self._used: dict[str, float] = {}
        self._ended: dict[str, float] = {}

    def mark_used(self, jti: str, expires: float) -> bool:
        """Record ``jti`` as used; False when it already was."""
        self._prune()
        if jti in self._used:
            return False
        self._used[jti] = expires
        return True

    def end_family(self, family: str, expires: float) -> None:
        self._ended[family] = max(expires, self._ended.get(family, 0.0))

    def family_ended(self, family: str) -> bool:
        return family in self._ended

    def _prune(self) -> None:
        now = time.time()
        for table in (self._used, self._ended):
            if len(table) > 1000:
                for key in [k for k, exp in table.items() if exp < now]:
                    del table[key]


class TokenService:
    """Issues and checks the admin API's tokens with one HMAC secret."""

    def __init__(self, secret: str, access_seconds: int, refresh_seconds: int) -> None:
        self._secret = secret
        self.access_seconds = access_seconds
        self.refresh_seconds = refresh_seconds
        self.used = UsedRefreshTokens()

    def _encode(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def issue(self, user: User, family: str | None = None) -> IssuedTokens:
        """A new access and refresh token for ``user``; ``family`` continues an earlier login."""
        now = int(time.time())
        base = {
            "iss": ISSUER,
            "sub": str(user.id),
            "role": str(user.role),
            "org": str(user.org_id) if user.org_id else None,  # type: ignore[attr-defined]
            "iat": now,
        }
        access = self._encode(
            {**base, "type": "access", "exp": now + self.access_seconds, "jti": uuid.uuid4().hex}
        )
        refresh = self._encode(
            {
                **base,
                "type": "refresh",
                "exp": now + self.refresh_seconds,
                "jti": uuid.uuid4().hex,
                "fam": family or uuid.uuid4().hex,
            }
        )
        return IssuedTokens(access, refresh, self.access_seconds, self.refresh_seconds)

    def decode(self, token: str, expected: TokenType) -> dict[str, Any]:
        """The claims of a valid, unexpired token of the expected type; 401 otherwise."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "jti", "type", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise invalid_token(
                "The access token has expired: get a new one at /admin/api/auth/refresh."
                if expected == "access"
                else "The refresh token has expired: log in again."
            ) from None
        except jwt.PyJWTError:
            raise invalid_token(f"The {expected} token is invalid.") from None
        if claims.get("type") != expected:
            if expected == "access":
                raise invalid_token("This is a refresh token: send an access token.")
            raise invalid_token("This is not a refresh token.")
        try:
            uuid.UUID(str(claims["sub"]))
        except ValueError:
            raise invalid_token(f"The {expected} token is invalid.") from None
        return claims
