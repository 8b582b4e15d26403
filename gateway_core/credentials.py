"""Credential pools: the upstream credentials of a deployment, their rate limits and which one a call uses.

A deployment has a pool of one (its ``api_key``) unless it lists ``credentials``. Each credential may
carry its own ``api_key``, ``rpm``/``tpm`` limits and provider ``options`` (merged over the
deployment's, e.g. a Vertex service account per credential). The provider prepares what calls with a
credential need once at start-up (:meth:`gateway_core.providers.Provider.prepare_credential`: header
dicts, a token source) and asks the pool for a credential per upstream request
(:meth:`CredentialPool.acquire`).

Limits are counted with ``gateway.counters`` (in Redis when configured, so every replica shares
them), per credential and per deployment, over rolling one-minute windows:

* RPM: one request is taken before the call, all or nothing with the TPM check;
* TPM: checked before the call (a window already at or over its limit refuses) and the real tokens
  are added once the call ended (:meth:`CredentialPool.settle`, called by the pipeline).

A credential at its limit is skipped for the next one (``round_robin``: in turn; ``fill_first``: the
first that has room). When none has room, or the deployment itself is at its limit, the call raises
:class:`~gateway_core.errors.DeploymentLimited` and the deployment's ``limited_until`` tells
balancers and the pipeline (of this worker) to leave it alone until then.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from gateway_core.errors import ConfigError, DeploymentLimited
from gateway_core.limits.outcome import tokens_used
from gateway_core.limits.windows import Verdict, Window
from gateway_core.pricing import estimate_prompt_tokens

if TYPE_CHECKING:
    from gateway_core.config import CredentialConfig, DeploymentConfig
    from gateway_core.providers import Provider
    from gateway_core.routing import Deployment
    from gateway_core.types import RequestContext

log = logging.getLogger("lockgate.credentials")

#: ``RequestContext.state`` key of the credential the last upstream request used.
LEASE_KEY = "lockgate.credential"
#: Length of the RPM and TPM windows, in seconds.
MINUTE = 60.0
#: Seconds a limit is assumed to last when the counters cannot tell (an amount that never fits).
FALLBACK_WAIT = MINUTE


@dataclass(slots=True, eq=False)
class Credential:
    """One upstream credential of a deployment's pool."""

    #: The configured id, else its position in the pool: for logs, never secret.
    id: str
    #: The credential's own key, else the deployment's; None when neither sets one (the provider
    #: then looks in the environment).
    api_key: str | None
    #: The provider's options with this credential's merged over the deployment's.
    options: BaseModel
    rpm: int | None = None
    tpm: int | None = None
    #: What the provider prepared for calls with this credential (headers, a token source ...).
    auth: Any = None
    #: ``time.monotonic()`` until which this worker skips the credential (it was at its limit).
    limited_until: float = 0.0
    #: Counter scope and windows (set when the pool is bound to its deployment).
    scope: str = ""
    windows: tuple[Window, ...] = ()


@dataclass(slots=True)
class Lease:
    """The credential an upstream request used and where its tokens are to be counted."""

    pool: CredentialPool
    credential: Credential
    #: ``(scope, TPM window, verdict of the take)`` of every TPM window that counts the call.
    tpm: tuple[tuple[str, Window, Verdict], ...]


def rate_windows(rpm: int | None, tpm: int | None) -> tuple[Window, ...]:
    """The counter windows of an RPM and a TPM limit: one request taken, tokens only checked."""
    windows = []
    if rpm is not None:
        windows.append(Window("rpm", rpm, MINUTE, 1))
    if tpm is not None:
        windows.append(Window("tpm", tpm, MINUTE, 0))
    return tuple(windows)


class CredentialPool:
    """The credentials of one deployment and the choice among them (one pool per provider instance)."""

    __slots__ = (
        "_configs",
        "_prepared",
        "_turn",
        "credentials",
        "deployment",
        "fill_first",
        "limited",
        "needs_settle",
        "provider",
        "scope",
        "windows",
    )

    def __init__(self, provider: Provider, config: DeploymentConfig) -> None:
        self.provider = provider
        self.fill_first = config.credential_strategy == "fill_first"
        self._configs = config
        key = config.api_key.get_secret_value() if config.api_key is not None else None
        own: list[CredentialConfig] = list(config.credentials)
        self.credentials: tuple[Credential, ...] = (
            tuple(
                Credential(
                    id=item.id or str(index),
                    api_key=item.api_key.get_secret_value() if item.api_key is not None else key,
                    options=provider.options,
                    rpm=item.rpm,
                    tpm=item.tpm,
                )
                for index, item in enumerate(own)
            )
            if own
            else (Credential(id="0", api_key=key, options=provider.options),)
        )
        #: The deployment this pool serves (None until :meth:`bind`).
        self.deployment: Deployment | None = None
        self.scope = ""
        self.windows = rate_windows(config.rpm, config.tpm)
        #: Whether any credential or the deployment has a limit (else no counter is touched).
        self.limited = bool(self.windows) or any(c.rpm or c.tpm for c in self.credentials)
        #: Whether calls add their tokens to a TPM window once they ended.
        self.needs_settle = config.tpm is not None or any(c.tpm for c in self.credentials)
        self._turn = -1
        self._prepared = False

    def __len__(self) -> int:
        return len(self.credentials)

    # --- start-up -------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Validate each credential's merged options and let the provider prepare it (once).

        Raises ``ConfigError`` naming the credential (never its key).
        """
        if self._prepared:
            return
        provider = self.provider
        options_model = type(provider).Options
        base = self._configs.options
        items: list[CredentialConfig | None] = [*self._configs.credentials] or [None]
        for index, (item, credential) in enumerate(zip(items, self.credentials, strict=True)):
            where = f"credentials[{index}]" if item is not None else "api_key"
            if item is not None and item.options:
                try:
                    credential.options = options_model.model_validate({**base, **item.options})
                except ValidationError as exc:
                    problems = "; ".join(
                        f"{'.'.join(str(p) for p in error['loc'])}: "
                        f"{'unknown key' if error['type'] == 'extra_forbidden' else error['msg']}"
                        for error in exc.errors()
                    )
                    raise ConfigError(f"{where}.options: {problems}") from None
            try:
                credential.auth = provider.prepare_credential(credential)
            except ConfigError as exc:
                if len(self.credentials) == 1:
                    raise
                raise ConfigError(f"{where}: {exc}") from None
        self._prepared = True

    def bind(self, deployment: Deployment) -> None:
        """Prepare the credentials and name the counters after ``deployment``, which this pool serves."""
        self.prepare()
        self.deployment = deployment
        self.scope = f"deployment:{deployment.id}"
        for credential in self.credentials:
            credential.scope = f"credential:{deployment.id}:{credential.id}"
            credential.windows = rate_windows(credential.rpm, credential.tpm)
        deployment.needs_settle = self.needs_settle

    # --- per call -------------------------------------------------------------------------------------

    async def acquire(self, ctx: RequestContext) -> Credential:
        """The credential for one upstream request, its RPM taken and TPM checked.

        Raises :class:`DeploymentLimited` when every credential, or the deployment, is at its limit.
        """
        if not self._prepared:
            self.prepare()
        credentials = self.credentials
        gateway = ctx.gateway
        if not self.limited or gateway is None or self.deployment is None:
            # No limits (or a health check, which belongs to no client): nothing to count.
            if len(credentials) == 1 or self.fill_first:
                return credentials[0]
            self._turn = (self._turn + 1) % len(credentials)
            return credentials[self._turn]
        deployment = self.deployment
        now = time.monotonic()
        if deployment.limited_until > now:
            raise DeploymentLimited(deployment.id, deployment.limited_until - now)
        counters = gateway.counters
        soonest: float | None = None
        count = len(credentials)
        start = 0
        if not self.fill_first and count > 1:
            self._turn = start = (self._turn + 1) % count
        for offset in range(count):
            credential = credentials[(start + offset) % count]
            if credential.limited_until > now:
                wait = credential.limited_until - now
                soonest = wait if soonest is None else min(soonest, wait)
                continue
            requests: list[tuple[str, tuple[Window, ...]]] = []
            if credential.windows:
                requests.append((credential.scope, credential.windows))
            if self.windows:
                requests.append((self.scope, self.windows))
            if not requests:
                return credential
            reservation = await counters.take_all(requests)
            refusal = reservation.refusal
            if refusal is None:
                if self.needs_settle:
                    ctx.state[LEASE_KEY] = Lease(self, credential, _tpm_of(reservation.verdicts))
                return credential
            wait = refusal.retry_after if refusal.retry_after is not None else FALLBACK_WAIT
            now = time.monotonic()
            if refusal.scope == self.scope:
                self._limit(deployment, now, wait, "the deployment")
                raise DeploymentLimited(deployment.id, wait)
            credential.limited_until = now + wait
            log.debug("credential %s of %s is at its limit for %.1f s", credential.id, deployment.id, wait)
            soonest = wait if soonest is None else min(soonest, wait)
        assert soonest is not None
        self._limit(deployment, time.monotonic(), soonest, "every credential")
        raise DeploymentLimited(deployment.id, soonest)

    @staticmethod
    def _limit(deployment: Deployment, now: float, wait: float, what: str) -> None:
        if deployment.limited_until <= now:
            log.info("deployment %s: %s is at its rate limit for %.1f s", deployment.id, what, wait)
        deployment.limited_until = max(deployment.limited_until, now + wait)

    async def settle(self, ctx: RequestContext) -> None:
        """Add the tokens of the call that ended to the TPM windows of its credential and deployment.

        Called once after the call; ``ctx.usage`` may be None (then the prompt is estimated when the
        call succeeded or the client left mid-answer). Never raises.
        """
        lease = ctx.state.get(LEASE_KEY)
        if not isinstance(lease, Lease) or lease.pool is not self:
            return
        del ctx.state[LEASE_KEY]
        try:
            tokens = tokens_used(ctx, estimate_prompt_tokens(ctx.body))
            if tokens <= 0:
                return
            counters = ctx.gateway.counters
            for scope, window, verdict in lease.tpm:
                await counters.adjust(scope, window, tokens, at=verdict.at, backend=verdict.backend)
        except Exception as exc:
            where = self.deployment.id if self.deployment is not None else self.provider.name
            log.error("the tokens of a call to %s were not counted: %s: %s", where, type(exc).__name__, exc)


def _tpm_of(verdicts: list[Verdict]) -> tuple[tuple[str, Window, Verdict], ...]:
    return tuple(
        (verdict.scope, window, verdict)
        for verdict in verdicts
        for window in verdict.windows
        if window.name == "tpm"
    )


__all__ = ["LEASE_KEY", "Credential", "CredentialPool", "Lease", "rate_windows"]
