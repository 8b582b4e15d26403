"""Retries, fallbacks and deadlines: which failures are tried again, where, and after how long.

The pipeline makes up to ``retry.attempts`` calls per model group. After a failure worth retrying it
switches at once to another usable deployment of the group (one it has not tried, whose breaker is
closed and that is not rate limited); only when none is left does it call a deployment again, after
an exponential back-off with jitter, or after the upstream's ``Retry-After``/``retry-after-ms`` when
that is longer (and not over ``retry.max_retry_after``): the hint of a 429, and of an overloaded
upstream (Anthropic's 529 ``overloaded_error``, a 503 with ``Retry-After``). When the group is exhausted, the fallback
groups are tried in order, each with its own attempts; a prompt too long for the model goes to the
``context_window_fallbacks`` instead. The deadline bounds all of it, waits included; a stream is
never retried once its first event reached the client.
"""

from __future__ import annotations

import contextlib
import email.utils
import fnmatch
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from gateway_core.config import GatewayConfig, ModelGroupConfig, RetryConfig
from gateway_core.errors import GatewayError


class Failure(StrEnum):
    """Why an upstream call failed, as far as retrying and health tracking care."""

    SERVER_ERROR = "server_error"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    AUTH = "auth"
    #: This gateway's own limit of the deployment (RPM/TPM of its credentials) is reached.
    LIMITED = "limited"
    CONTEXT_WINDOW = "context_window"


#: Failures that say something about the deployment's health (reported to the health tracker).
HEALTH_FAILURES = frozenset(
    {Failure.SERVER_ERROR, Failure.RATE_LIMITED, Failure.TIMEOUT, Failure.CONNECTION, Failure.AUTH}
)

#: Errors of the gateway itself, not of the upstream: never retried.
_GATEWAY_CODES = frozenset({"limits_unavailable", "internal_error", "deadline_exceeded"})
_CONTEXT_CODES = frozenset({"context_length_exceeded", "context_window_exceeded", "string_above_max_length"})
_CONTEXT_PHRASES = (
    "maximum context length",
    "context length",
    "context window",
    "prompt is too long",
    "input is too long",
    "too many tokens",
    "exceeds the maximum number of tokens",
    "input token count",
)


def classify(error: GatewayError) -> Failure | None:
    """The kind of an upstream failure; None for errors that are the client's (never retried)."""
    code = error.code
    if code == "deployment_rate_limited":
        return Failure.LIMITED
    if code == "upstream_timeout":
        return Failure.TIMEOUT
    if code in ("upstream_unreachable", "upstream_connection_error"):
        return Failure.CONNECTION
    if code == "upstream_auth_error":
        return Failure.AUTH
    status = error.upstream_status
    if status is None:
        # The gateway's own answer about the upstream: malformed JSON, an error event, a 5xx. Its
        # own limits being unreachable (Redis down, fail-closed) are no deployment's fault.
        if code in _GATEWAY_CODES:
            return None
        return Failure.SERVER_ERROR if error.status >= 500 else None
    if status == 429:
        return Failure.RATE_LIMITED
    if status in (400, 413, 422) and _is_context_window(error):
        return Failure.CONTEXT_WINDOW
    if status >= 500 or status in (408, 409):
        return Failure.SERVER_ERROR
    return None


def _is_context_window(error: GatewayError) -> bool:
    if error.code in _CONTEXT_CODES:
        return True
    message = error.message.lower()
    return any(phrase in message for phrase in _CONTEXT_PHRASES)


#: Upstream statuses of an overloaded upstream (Anthropic answers 529), whose retry hint is honoured.
OVERLOADED_STATUSES = frozenset({503, 529})


def retry_hint(error: GatewayError, failure: Failure | None) -> float | None:
    """The retry hint the gateway honours for a failed call, in seconds: a 429's, and an overloaded
    upstream's (a 529 or a 503 with ``Retry-After``). The deployment cools down for that long, and
    a retry waits at least that long; None when there is none or the failure is of another kind."""
    if failure is Failure.RATE_LIMITED or (
        failure is Failure.SERVER_ERROR and error.upstream_status in OVERLOADED_STATUSES
    ):
        return retry_after_seconds(error)
    return None


def retry_after_seconds(error: GatewayError) -> float | None:
    """The upstream's retry hint of ``error`` in seconds: ``retry-after-ms``, else ``Retry-After``
    (seconds or an HTTP date), else the error's own ``retry_after``; None without one."""
    hint = header_retry_after(error.headers)
    if hint is not None:
        return hint
    retry_after = getattr(error, "retry_after", None)
    return float(retry_after) if isinstance(retry_after, int | float) else None


def header_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` headers (any case); None without one."""
    seconds: float | None = None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "retry-after-ms":
            with contextlib.suppress(ValueError):
                return max(0.0, float(value) / 1000)
        elif lowered == "retry-after":
            try:
                seconds = max(0.0, float(value))
            except ValueError:
                with contextlib.suppress(TypeError, ValueError):
                    seconds = max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return seconds if seconds is not None and math.isfinite(seconds) else None


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """The retry, fallback and deadline policy of one model group."""

    retry: RetryConfig
    fallbacks: tuple[str, ...] = ()
    context_window_fallbacks: tuple[str, ...] = ()
    deadline: float | None = None

    def retries(self, failure: Failure, status: int | None) -> bool:
        """Whether a call that failed this way may be made again (on this or another deployment)."""
        retry = self.retry
        if failure is Failure.TIMEOUT:
            return retry.on_timeout
        if failure is Failure.CONNECTION:
            return retry.on_connection_error
        if failure in (Failure.LIMITED, Failure.AUTH):
            return True  # another deployment may serve: never the same one again
        if failure is Failure.CONTEXT_WINDOW:
            return False
        return status is None or status in retry.on_status

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Seconds to wait before calling a deployment again the ``retry_number``-th time (1, 2, ...)."""
        retry = self.retry
        delay: float = min(retry.max_backoff, retry.backoff * 2.0 ** (retry_number - 1))
        return delay * (1 - retry.jitter * rng.random())


class Policies:
    """The policy of every model group, from the configuration; groups only the database knows, and
    ``provider/model`` groups, get the defaults (and the fallbacks configured for their name)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config.resilience
        self._by_group: dict[str, GroupPolicy] = {}
        for name, group in config.models.items():
            self._by_group[name] = self._build(name, group)
        self._default_cache: dict[str, GroupPolicy] = {}

    def _build(self, name: str, group: ModelGroupConfig | None) -> GroupPolicy:
        defaults = self.config
        fallbacks = group.fallbacks if group is not None and group.fallbacks is not None else None
        context = (
            group.context_window_fallbacks
            if group is not None and group.context_window_fallbacks is not None
            else None
        )
        return GroupPolicy(
            retry=group.retry if group is not None and group.retry is not None else defaults.retry,
            fallbacks=tuple(fallbacks if fallbacks is not None else _lookup(defaults.fallbacks, name)),
            context_window_fallbacks=tuple(
                context if context is not None else _lookup(defaults.context_window_fallbacks, name)
            ),
            deadline=group.deadline
            if group is not None and group.deadline is not None
            else defaults.deadline,
        )

    def for_group(self, name: str) -> GroupPolicy:
        policy = self._by_group.get(name)
        if policy is None:
            policy = self._default_cache.get(name)
            if policy is None:
                if len(self._default_cache) > 4096:
                    self._default_cache.clear()
                policy = self._default_cache[name] = self._build(name, None)
        return policy

    def targets(self) -> set[str]:
        """Every group named as a fallback, to check at start-up."""
        named: set[str] = set()
        for policy in self._by_group.values():
            named.update(policy.fallbacks, policy.context_window_fallbacks)
        for targets in (*self.config.fallbacks.values(), *self.config.context_window_fallbacks.values()):
            named.update(targets)
        return named


def _lookup(table: Mapping[str, list[str]], name: str) -> list[str]:
    found = table.get(name)
    if found is not None:
        return found
    for pattern, targets in table.items():
        if fnmatch.fnmatchcase(name, pattern):
            return targets
    return []
