"""Logging in, refreshing tokens and the caller's own account (``/admin/api/auth/*``)."""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import UTC, datetime

from gateway_core.admin import schemas
from gateway_core.admin.api import Call, Operation
from gateway_core.admin.tokens import IssuedTokens, invalid_token
from gateway_core.errors import GatewayError
from gateway_core.store import models

log = logging.getLogger("lockgate.admin")

#: Channel on which gateways tell each other about exchanged refresh tokens.
TOKENS_CHANNEL = "lockgate:admin-tokens"


class LoginLimiter:
    """Failed logins per e-mail address and per client address in a sliding window (per process).

    Checked before the password is, so a guessing client costs no argon2 time once it is blocked.
    """

    def __init__(self, per_email: int = 5, per_address: int = 50, window_seconds: float = 300.0) -> None:
        self.per_email = per_email
        self.per_address = per_address
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, address: str, email: str) -> int | None:
        """Seconds to wait when either limit is reached, else ``None``."""
        now = time.monotonic()
        waits = []
        for key, limit in ((f"email:{email}", self.per_email), (f"addr:{address}", self.per_address)):
            times = self._recent(key, now)
            if len(times) >= limit:
                waits.append(times[0] + self.window - now)
        return max(1, int(max(waits)) + 1) if waits else None

    def failed(self, address: str, email: str) -> None:
        now = time.monotonic()
        if len(self._failures) > 100_000:  # bounded: forget everything rather than grow without end
            self._failures.clear()
        for key in (f"email:{email}", f"addr:{address}"):
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, email: str) -> None:
        self._failures.pop(f"email:{email}", None)


def _pair(tokens: IssuedTokens) -> schemas.TokenPair:
    return schemas.TokenPair(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        expires_in=tokens.expires_in,
        refresh_expires_in=tokens.refresh_expires_in,
    )


def user_out(user: models.User) -> schemas.User:
    return schemas.User(
        id=user.id,
        email=user.email,
        name=user.name,
        role=user.role,
        org_id=user.org_id,  # type: ignore[attr-defined]
        is_active=user.is_active,
        has_password=bool(user.password_hash),
        metadata=user.metadata or {},
        last_login_at=user.last_login_at,
        created_at=user.created_at,
        updated_at=user.updated_at,
    )


async def login(call: Call) -> schemas.TokenPair:
    body: schemas.LoginRequest = call.body
    api = call.api
    address = call.request.client.host if call.request.client else "?"
    email = body.email.strip().lower()
    wait = api.limiter.retry_after(address, email)
    if wait is not None:
        raise GatewayError(
            429,
            "Too many failed logins: wait before trying again.",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(wait)},
        )
    from gateway_core.store import users  # passlib loads on first use, not with the gateway

    async with api.password_slots:  # argon2 is slow and memory-hungry: a few at a time, in threads
        user = await users.authenticate_user(body.email, body.password)
    if user is None:
        api.limiter.failed(address, email)
        # Never log what was typed: a password typed into the e-mail field would end up in the log.
        log.info("admin login failed from %s", address)
        raise GatewayError(401, "Incorrect e-mail address or password.", code="invalid_credentials")
    api.limiter.succeeded(email)
    user.last_login_at = datetime.now(UTC)
    await user.save(update_fields=["last_login_at"])
    log.info("admin login: user %s from %s", user.id, address)
    return _pair(api.token_service.issue(user))


async def refresh(call: Call) -> schemas.TokenPair:
    body: schemas.RefreshRequest = call.body
    api = call.api
    service = api.token_service
    claims = service.decode(body.refresh_token, "refresh")
    family = str(claims.get("fam") or claims["jti"])
    expires = float(claims["exp"])
    if service.used.family_ended(family):
        raise invalid_token("This login has ended: log in again.")
    if not service.used.mark_used(str(claims["jti"]), expires):
        # A refresh token used twice was copied: end its whole family on every gateway.
        service.used.end_family(family, expires + service.refresh_seconds)
        await call.publish(TOKENS_CHANNEL, {"family": family, "exp": expires + service.refresh_seconds})
        log.warning("admin refresh token reused for user %s: its login is ended", claims["sub"])
        raise invalid_token("This refresh token was already used: log in again.")
    await call.publish(TOKENS_CHANNEL, {"jti": str(claims["jti"]), "exp": expires})
    user = await models.User.get_or_none(id=claims["sub"])
    if user is None or not user.is_active:
        raise invalid_token("The user of this token no longer exists or is disabled.")
    return _pair(service.issue(user, family=family))


async def me(call: Call) -> schemas.User:
    return user_out(call.user.user)


OPERATIONS = [
    Operation(
        "POST",
        "/auth/login",
        login,
        "Log in",
        "auth",
        role=None,
        body=schemas.LoginRequest,
        response=schemas.TokenPair,
        description=(
            "Exchange an e-mail address and password for an access token and a refresh token. "
            "Failures answer 401 with the same message whatever was wrong; repeated failures for one "
            "address answer 429 with `Retry-After`."
        ),
        errors=(429,),
    ),
    Operation(
        "POST",
        "/auth/refresh",
        refresh,
        "Refresh tokens",
        "auth",
        role=None,
        body=schemas.RefreshRequest,
        response=schemas.TokenPair,
        description=(
            "Exchange a refresh token for a new pair. Each refresh token works once; presenting a used "
            "one ends the login it belongs to."
        ),
    ),
    Operation(
        "GET",
        "/auth/me",
        me,
        "The logged-in user",
        "auth",
        response=schemas.User,
    ),
]
