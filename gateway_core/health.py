"""Deployment health: circuit breakers, 429 cool-downs, passive outlier detection and active checks.

One :class:`HealthTracker` per gateway (``gateway.health``). The request pipeline asks it which
deployments may serve an attempt (:meth:`~HealthTracker.available`, only when
:attr:`~HealthTracker.any_unavailable` is set) and reports each upstream outcome
(:meth:`~HealthTracker.begin`, :meth:`~HealthTracker.success`, :meth:`~HealthTracker.failure`).
Those methods are synchronous and cheap: they never wait on anything.

A deployment's breaker is *closed* (serving), *open* (refused until its cooldown ends), then
*half-open* (a few probe requests go through: a success closes it, a failure opens it again for a
longer cooldown). A 429 (or an overloaded upstream's 529/503) with a retry hint *cools down* the deployment for that long without opening
its breaker. Failure counts and latencies are kept per worker; with Redis, state changes (opened,
half-open, closed, cooled down) are written to a hash per deployment and broadcast on
``lockgate:health``, so every replica refuses the same deployments. Redis calls run in background
tasks: an outage only means replicas stop hearing of each other until it is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import aiohttp

from gateway_core.errors import GatewayError
from gateway_core.events import HEALTH_CHANNEL
from gateway_core.resilience import HEALTH_FAILURES, classify, retry_hint

if TYPE_CHECKING:
    from gateway_core.config import HealthConfig
    from gateway_core.gateway import Gateway
    from gateway_core.routing import Deployment
    from gateway_core.store.kv import SharedRedis

log = logging.getLogger("lockgate.health")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
COOLING_DOWN = "cooling_down"

#: Why an upstream call failed, as the pipeline reports it.
FailureKind = Literal["server_error", "rate_limited", "timeout", "connection", "auth"]
FAILURE_KINDS: frozenset[str] = frozenset({"server_error", "rate_limited", "timeout", "connection", "auth"})

#: Buckets of the sliding window requests and failures are counted in.
WINDOW_BUCKETS = 10
#: Weight of the newest latency in the moving average.
LATENCY_ALPHA = 0.2
#: Longest wait for pending Redis writes when the gateway stops.
STOP_FLUSH_SECONDS = 2.0
#: Longest sleep of the background loop (it also notices new deployments to check).
TICK_SECONDS = 1.0
#: Deployments whose shared state is read from Redis at once.
LOAD_BATCH = 50

#: Replace a deployment's shared state: ``KEYS[1]`` the hash, ``ARGV[1]`` its lifetime in seconds,
#: then field, value, field, value...
_WRITE_STATE = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


def state_key(deployment_id: str) -> str:
    """The Redis hash holding a deployment's shared state (hash-tagged by the deployment id)."""
    return f"lockgate:health:{{{deployment_id}}}"


def check_lock_key(deployment_id: str) -> str:
    """The Redis key a replica sets (NX) to run one interval's active check of a deployment."""
    return f"lockgate:health:{{{deployment_id}}}:check"


class Clock(Protocol):
    """Where the tracker reads time: monotonic for its own decisions, wall clock for Redis."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The real clocks (:func:`time.monotonic`, :func:`time.time`)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


# --- classifying failures ----------------------------------------------------------------------------


def upstream_failure(error: BaseException) -> tuple[FailureKind, float | None] | None:
    """What to report for an upstream call that raised ``error``: ``(kind, retry_after)``.

    None when the error is the client's (a 400, an unsupported parameter) or not the deployment's
    doing (its own rate limits): those are never reported. The classification is the retry policy's.
    """
    if isinstance(error, GatewayError):
        failure = classify(error)
        if failure is None or failure not in HEALTH_FAILURES:
            return None
        return cast(FailureKind, failure.value), retry_hint(error, failure)
    if isinstance(error, TimeoutError):
        return "timeout", None
    if isinstance(error, OSError | aiohttp.ClientError):
        return "connection", None
    return "server_error", None


# --- counting --------------------------------------------------------------------------------------


class SlidingWindow:
    """Requests and failures of the last ``seconds``, counted in :data:`WINDOW_BUCKETS` buckets."""

    __slots__ = ("_epochs", "_failures", "_requests", "_size")

    def __init__(self, seconds: float) -> None:
        self._size = seconds / WINDOW_BUCKETS
        self._epochs = [-1] * WINDOW_BUCKETS
        self._requests = [0] * WINDOW_BUCKETS
        self._failures = [0] * WINDOW_BUCKETS

    def add(self, now: float, failed: bool) -> None:
        epoch = int(now // self._size)
        slot = epoch % WINDOW_BUCKETS
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._requests[slot] = 0
            self._failures[slot] = 0
        self._requests[slot] += 1
        if failed:
            self._failures[slot] += 1

    def totals(self, now: float) -> tuple[int, int]:
        """``(requests, failures)`` within the window."""
        oldest = int(now // self._size) - WINDOW_BUCKETS + 1
        requests = failures = 0
        for slot, epoch in enumerate(self._epochs):
            if epoch >= oldest:
                requests += self._requests[slot]
                failures += self._failures[slot]
        return requests, failures

    def clear(self) -> None:
        for slot in range(WINDOW_BUCKETS):
            self._epochs[slot] = -1
            self._requests[slot] = self._failures[slot] = 0


class DeploymentState:
    """What one worker knows of one deployment (monotonic times unless named otherwise)."""

    __slots__ = (
        "breaker",
        "check_at",
        "check_error",
        "check_ok",
        "checking",
        "closed_at",
        "consecutive",
        "cool_since",
        "cool_until",
        "ejected",
        "id",
        "last_error",
        "latency",
        "next_check",
        "openings",
        "probes",
        "recent",
        "since",
        "until",
        "window",
    )

    def __init__(self, deployment_id: str, now: float, wall: float, config: HealthConfig) -> None:
        self.id = deployment_id
        self.breaker = CLOSED
        #: Wall-clock time the breaker entered its state.
        self.since = wall
        #: When an open breaker turns half-open.
        self.until = 0.0
        #: When a cool-down ends (0: none); ``cool_since`` is its wall-clock start.
        self.cool_until = 0.0
        self.cool_since = wall
        self.closed_at = now
        #: Openings in a row; each doubles the cooldown.
        self.openings = 0
        #: Start times of half-open probes in flight.
        self.probes: list[float] = []
        #: Times of the latest failures (up to ``breaker.failures``).
        self.recent: deque[float] = deque(maxlen=config.breaker.failures)
        self.window = SlidingWindow(config.breaker.window)
        self.consecutive = 0
        self.last_error: str | None = None
        self.latency: float | None = None
        self.ejected = False
        self.check_ok: bool | None = None
        self.check_at = 0.0  # wall clock
        self.check_error: str | None = None
        self.checking = False
        self.next_check = now


class HealthTracker:
    """Health of every deployment of one gateway; see the module docstring."""

    def __init__(self, gateway: Gateway, *, clock: Clock | None = None) -> None:
        self.gateway = gateway
        self.config: HealthConfig = gateway.config.health
        self.clock: Clock = clock or SystemClock()
        # The real clocks are read directly: one call less on the request path.
        self._now = time.monotonic if clock is None else clock.monotonic
        self._wall = time.time if clock is None else clock.time
        #: Tells this tracker's broadcasts from the others'.
        self.origin = uuid.uuid4().hex
        breaker = self.config.breaker
        self._probes = breaker.half_open_probes
        self._probe_timeout = breaker.probe_timeout
        self._window = breaker.window
        self._states: dict[str, DeploymentState] = {}
        #: Ids whose breaker is not closed or that may still be cooling down.
        self._unavailable: set[str] = set()
        self._deployments: dict[str, Deployment] = {}
        self._groups: dict[str, tuple[str, ...]] = {}
        self._checked: tuple[str, ...] = ()
        self._started_at = self._wall()
        self._redis: SharedRedis | None = gateway.redis
        self._write = self._redis.script(_WRITE_STATE) if self._redis is not None else None
        self._pending: dict[str, tuple[dict[str, str], int]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        self.refresh()
        if self._redis is not None:
            gateway.events.subscribe(HEALTH_CHANNEL, self._on_message)
            self._redis.on_recover(self._reload_shared)
            gateway.events.on_reconnect(self._reload_shared)

    # --- the request path (synchronous, cheap) ------------------------------------------------------

    @property
    def any_unavailable(self) -> bool:
        """Whether some deployment is open, half-open or cooling down (else every one is available)."""
        return bool(self._unavailable)

    def available(self, deployment: Deployment) -> bool:
        """Whether ``deployment`` may serve an attempt now (half-open: while a probe slot is free)."""
        state = self._states.get(deployment.id)
        if state is None or (state.breaker == CLOSED and not state.cool_until):
            return True
        now = self._now()
        if state.cool_until:
            if now < state.cool_until:
                return False
            state.cool_until = 0.0
            if state.breaker == CLOSED:
                self._unavailable.discard(state.id)
                return True
        if state.breaker == OPEN:
            if now < state.until:
                return False
            self._half_open(state)
        probes = state.probes
        if probes:
            expired = now - self._probe_timeout
            while probes and probes[0] <= expired:
                probes.pop(0)
        return len(probes) < self._probes

    def begin(self, deployment: Deployment) -> None:
        """The pipeline chose ``deployment`` for an attempt: a half-open one gives it a probe slot."""
        state = self._states.get(deployment.id)
        if state is None or state.breaker == CLOSED:
            return
        now = self._now()
        if state.breaker == OPEN:
            if now < state.until:
                return
            self._half_open(state)
        state.probes.append(now)

    def success(self, deployment: Deployment, latency: float) -> None:
        """The attempt on ``deployment`` succeeded after ``latency`` seconds."""
        state = self._states.get(deployment.id) or self._create(deployment.id)
        if state is None:
            return
        now = self._now()
        state.window.add(now, False)
        state.consecutive = 0
        average = state.latency
        state.latency = latency if average is None else average + LATENCY_ALPHA * (latency - average)
        if state.breaker == HALF_OPEN:
            self._close(state, now, "a probe request succeeded")

    def failure(self, deployment: Deployment, kind: str, retry_after: float | None = None) -> None:
        """The attempt on ``deployment`` failed for an upstream reason (``kind``: see :data:`FAILURE_KINDS`).

        A ``retry_after`` (the hint of a 429 or of an overloaded upstream, see
        :func:`~gateway_core.resilience.retry_hint`) cools the deployment down for that long (up to
        ``health.max_retry_after``). Client mistakes (400s) are never reported.
        """
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; expected one of {sorted(FAILURE_KINDS)}")
        state = self._states.get(deployment.id) or self._create(deployment.id)
        if state is None:
            return
        now = self._now()
        state.window.add(now, True)
        state.consecutive += 1
        state.last_error = kind
        if retry_after is not None and retry_after > 0:
            self._cool(state, now, retry_after)
        if state.breaker == HALF_OPEN:
            self._open(state, now, f"a probe request failed ({kind})")
            return
        if state.breaker == OPEN:
            return
        breaker = self.config.breaker
        recent = state.recent
        recent.append(now)
        if len(recent) == recent.maxlen and now - recent[0] <= self._window:
            self._open(state, now, f"failed calls within {self._window:g} s: {len(recent)} (last: {kind})")
            return
        requests, failures = state.window.totals(now)
        if requests >= breaker.min_requests and failures >= breaker.failure_rate * requests:
            self._open(state, now, f"{failures} of {requests} requests failed (last: {kind})")
        elif self.config.outlier.enabled and self._is_outlier(state, now, requests, failures):
            self._open(state, now, f"outlier: {failures} of {requests} requests failed", ejected=True)

    def out_for(self, deployment: Deployment) -> tuple[bool, float] | None:
        """Why and how long ``deployment`` is out: ``(cooling down after a 429, seconds left)``;
        None when it is available or waits for a half-open probe slot."""
        state = self._states.get(deployment.id)
        if state is None:
            return None
        now = self._now()
        if state.cool_until > now:
            return True, state.cool_until - now
        if state.breaker == OPEN and state.until > now:
            return False, state.until - now
        return None

    # --- views ----------------------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """The health of every current deployment, in model table order (for the admin API)."""
        now, wall = self._now(), self._wall()
        checked = set(self._checked)
        out = []
        for deployment in self._deployments.values():
            state = self._states.get(deployment.id)
            requests, failures = state.window.totals(now) if state is not None else (0, 0)
            name, since, until = self._view(state, now, wall)
            check = None
            if state is not None and state.check_ok is not None:
                check = {"ok": state.check_ok, "at": _datetime(state.check_at), "error": state.check_error}
            out.append(
                {
                    "id": deployment.id,
                    "model_name": deployment.group,
                    "provider": deployment.provider.name,
                    "state": name,
                    "since": _datetime(since),
                    "until": _datetime(until) if until is not None else None,
                    "requests": requests,
                    "failures": failures,
                    "error_rate": failures / requests if requests else 0.0,
                    "consecutive_failures": state.consecutive if state is not None else 0,
                    "last_error": state.last_error if state is not None else None,
                    "latency_ewma": state.latency if state is not None else None,
                    "outlier_ejected": state is not None and state.ejected and state.breaker != CLOSED,
                    "active_checks": deployment.id in checked,
                    "last_check": check,
                }
            )
        return out

    def _view(
        self, state: DeploymentState | None, now: float, wall: float
    ) -> tuple[str, float, float | None]:
        """``(state name, since, until)``, times on the wall clock; never changes the state."""
        if state is None:
            return CLOSED, self._started_at, None
        if state.breaker == OPEN and now < state.until:
            return OPEN, state.since, wall + state.until - now
        if state.cool_until > now:
            return COOLING_DOWN, state.cool_since, wall + state.cool_until - now
        if state.breaker == OPEN:  # its cooldown is over: half-open since then
            return HALF_OPEN, wall + state.until - now, None
        return state.breaker, state.since, None

    # --- deployments come and go ----------------------------------------------------------------------

    def refresh(self) -> None:
        """Follow the gateway's current model table: drop the state of deployments that are gone.

        The gateway calls it after every reload; new deployments' shared state is read from Redis.
        """
        deployments: dict[str, Deployment] = {}
        groups: dict[str, tuple[str, ...]] = {}
        for group in self.gateway.groups():
            for deployment in group.deployments:
                deployments[deployment.id] = deployment
            groups[group.name] = tuple(deployment.id for deployment in group.deployments)
        new = [deployment_id for deployment_id in deployments if deployment_id not in self._deployments]
        self._deployments, self._groups = deployments, groups
        for gone in [deployment_id for deployment_id in self._states if deployment_id not in deployments]:
            del self._states[gone]
            self._unavailable.discard(gone)
        self._checked = tuple(d.id for d in deployments.values() if self.checks_enabled(d))
        if new and self._running and self._redis is not None:
            self._spawn(self._load(new))

    def checks_enabled(self, deployment: Deployment) -> bool:
        """Whether ``deployment`` gets active checks (its ``health_check``, else ``health.active.enabled``)."""
        override = deployment.provider.deployment.health_check
        return self.config.active.enabled if override is None else override

    # --- life cycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the shared state from Redis (bounded by its timeout), then start the background loop."""
        if self._running:
            return
        self._running = True
        if self._redis is not None:
            await self._load(list(self._deployments))
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="lockgate-health")

    async def stop(self) -> None:
        """Stop checks and the loop; give pending Redis writes a moment to finish."""
        if not self._running:
            return
        self._running = False
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(flusher), STOP_FLUSH_SECONDS)
        tasks = [task for task in (runner, flusher, *self._tasks) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._flusher = None
        self._pending.clear()

    # --- transitions ----------------------------------------------------------------------------------

    def _create(self, deployment_id: str) -> DeploymentState | None:
        if deployment_id not in self._deployments:
            return None  # a deployment reloaded away while its call ran
        state = DeploymentState(deployment_id, self._now(), self._wall(), self.config)
        self._states[deployment_id] = state
        return state

    def _open(self, state: DeploymentState, now: float, reason: str, *, ejected: bool = False) -> None:
        breaker = self.config.breaker
        if state.breaker == CLOSED:
            if now - state.closed_at >= breaker.max_cooldown:
                state.openings = 0  # closed long enough: start again from the base cooldown
            state.ejected = ejected
        state.openings += 1
        cooldown = min(breaker.cooldown * 2.0 ** min(state.openings - 1, 32), breaker.max_cooldown)
        state.breaker = OPEN
        state.until = now + cooldown
        state.since = self._wall()
        state.probes.clear()
        state.recent.clear()
        self._unavailable.add(state.id)
        log.warning("deployment %s: circuit breaker open for %.3g s: %s", state.id, cooldown, reason)
        self._share(state)

    def _half_open(self, state: DeploymentState) -> None:
        state.breaker = HALF_OPEN
        state.since = self._wall()
        state.probes.clear()
        log.info("deployment %s: circuit breaker half-open, letting probe requests through", state.id)
        self._share(state)

    def _close(self, state: DeploymentState, now: float, reason: str) -> None:
        state.breaker = CLOSED
        state.since = self._wall()
        state.closed_at = now
        self._reset(state)
        log.info("deployment %s: circuit breaker closed: %s", state.id, reason)
        self._share(state)

    def _reset(self, state: DeploymentState) -> None:
        """Forget the failures that led to an opening (the breaker just closed)."""
        state.ejected = False
        state.probes.clear()
        state.recent.clear()
        state.window.clear()
        state.consecutive = 0
        if not state.cool_until:
            self._unavailable.discard(state.id)

    def _cool(self, state: DeploymentState, now: float, seconds: float) -> None:
        until = now + min(seconds, self.config.max_retry_after)
        if until <= state.cool_until:
            return
        state.cool_until = until
        state.cool_since = self._wall()
        self._unavailable.add(state.id)
        log.info(
            "deployment %s: upstream asked to retry later, cooling down for %.3g s", state.id, until - now
        )
        self._share(state)

    def _is_outlier(self, state: DeploymentState, now: float, requests: int, failures: int) -> bool:
        """Whether ``state``'s error rate is far above the rest of its group's, within the ejection cap."""
        outlier = self.config.outlier
        if requests < outlier.min_requests:
            return False
        deployment = self._deployments.get(state.id)
        members = self._groups.get(deployment.group, ()) if deployment is not None else ()
        size = len(members)
        allowed = min(int(size * outlier.max_ejected_share), size - 1)
        if allowed < 1:
            return False
        ejected = rest_requests = rest_failures = 0
        for member in members:
            other = self._states.get(member)
            if other is None or other is state:
                continue
            if other.breaker != CLOSED:
                ejected += other.ejected
                continue  # an open deployment's failures would hide this one's
            other_requests, other_failures = other.window.totals(now)
            rest_requests += other_requests
            rest_failures += other_failures
        if ejected >= allowed or rest_requests < outlier.min_requests:
            return False
        rate = failures / requests
        return rate >= outlier.min_error_rate and rate > outlier.factor * (rest_failures / rest_requests)

    # --- sharing through Redis ------------------------------------------------------------------------

    def _share(self, state: DeploymentState) -> None:
        """Queue ``state`` for Redis and the other replicas (written by a background task)."""
        if self._redis is None or not self._running:
            return
        now, wall = self._now(), self._wall()
        fields = {
            "state": state.breaker,
            "since": f"{state.since:.3f}",
            "until": f"{wall + state.until - now:.3f}" if state.breaker == OPEN else "",
            "cool_until": f"{wall + state.cool_until - now:.3f}" if state.cool_until > now else "",
            "openings": str(state.openings),
            "ejected": "1" if state.ejected else "0",
            "check_ok": "" if state.check_ok is None else ("1" if state.check_ok else "0"),
            "check_at": f"{state.check_at:.3f}" if state.check_ok is not None else "",
            "check_error": state.check_error or "",
        }
        breaker = self.config.breaker
        latest = max(state.until if state.breaker == OPEN else now, state.cool_until)
        ttl = math.ceil(max(0.0, latest - now) + breaker.max_cooldown + breaker.window)
        self._pending[state.id] = (fields, ttl)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="lockgate-health-share"
            )

    async def _flush(self) -> None:
        while self._pending:
            deployment_id = next(iter(self._pending))
            fields, ttl = self._pending.pop(deployment_id)
            await self._publish(deployment_id, fields, ttl)

    async def _publish(self, deployment_id: str, fields: dict[str, str], ttl: int) -> None:
        from gateway_core.store.kv import RedisUnavailable

        assert self._write is not None
        args: list[str | int] = [ttl]
        for name, value in fields.items():
            args += [name, value]
        try:
            await self._write([state_key(deployment_id)], args)
        except RedisUnavailable:
            return  # the others load the states from Redis once it is back
        except Exception as exc:
            log.warning("health: cannot store the state of %s in Redis: %s", deployment_id, _describe(exc))
            return
        message = {"origin": self.origin, "id": deployment_id, "fields": fields}
        try:
            await self.gateway.events.publish(HEALTH_CHANNEL, message)
        except Exception as exc:
            log.warning("health: cannot announce the state of %s: %s", deployment_id, _describe(exc))

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("origin") == self.origin:
            return
        deployment_id, fields = message.get("id"), message.get("fields")
        if isinstance(deployment_id, str) and isinstance(fields, dict):
            self._apply(deployment_id, {str(name): str(value) for name, value in fields.items()})

    def _reload_shared(self) -> None:
        if self._running and self._redis is not None:
            self._spawn(self._load(list(self._deployments)))

    async def _load(self, deployment_ids: Iterable[str]) -> None:
        """Apply the states Redis holds for ``deployment_ids``; an outage is logged, never raised."""
        redis = self._redis
        assert redis is not None

        async def load(deployment_id: str) -> None:
            raw = await redis.run(lambda client: client.hgetall(state_key(deployment_id)))
            if raw:
                self._apply(deployment_id, {_text(name): _text(value) for name, value in raw.items()})

        ids = list(deployment_ids)
        for start in range(0, len(ids), LOAD_BATCH):
            results = await asyncio.gather(
                *(load(deployment_id) for deployment_id in ids[start : start + LOAD_BATCH]),
                return_exceptions=True,
            )
            errors = [result for result in results if isinstance(result, Exception)]
            if errors:
                log.warning("health: cannot read deployment states from Redis: %s", _describe(errors[0]))
                return

    def _apply(self, deployment_id: str, fields: Mapping[str, str]) -> None:
        """Take a state another replica wrote (last writer wins; failure counts stay local)."""
        breaker = fields.get("state")
        if breaker not in (CLOSED, OPEN, HALF_OPEN):
            return
        state = self._states.get(deployment_id) or self._create(deployment_id)
        if state is None:
            return
        now, wall = self._now(), self._wall()
        if breaker == OPEN:
            until = _number(fields.get("until"))
            state.until = now + (until - wall) if until is not None else now
            state.breaker = OPEN if state.until > now else HALF_OPEN
            state.probes.clear()
            state.recent.clear()
            state.ejected = fields.get("ejected") == "1"
            self._unavailable.add(state.id)
        elif breaker == HALF_OPEN:
            if state.breaker != HALF_OPEN:
                state.probes.clear()
            state.breaker = HALF_OPEN
            state.ejected = fields.get("ejected") == "1"
            self._unavailable.add(state.id)
        elif state.breaker != CLOSED:
            state.breaker = CLOSED
            state.closed_at = now
            self._reset(state)
        state.since = _number(fields.get("since")) or wall
        state.openings = int(_number(fields.get("openings")) or 0)
        cool_until = _number(fields.get("cool_until"))
        if cool_until is not None and cool_until > wall and now + cool_until - wall > state.cool_until:
            state.cool_until = now + cool_until - wall
            state.cool_since = wall
            self._unavailable.add(state.id)
        check_at = _number(fields.get("check_at"))
        if check_at is not None and check_at > state.check_at and fields.get("check_ok") in ("0", "1"):
            state.check_ok = fields.get("check_ok") == "1"
            state.check_at = check_at
            state.check_error = fields.get("check_error") or None

    # --- background: cool-downs ending, active checks -------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                delay = self._tick()
            except Exception:
                log.exception("health: the background loop failed; going on")
                delay = TICK_SECONDS
            await asyncio.sleep(delay)

    def _tick(self) -> float:
        """Clear ended cool-downs, start due checks; return the seconds until there is work again."""
        now = self._now()
        for deployment_id in list(self._unavailable):
            state = self._states.get(deployment_id)
            if state is None:
                self._unavailable.discard(deployment_id)
            elif state.cool_until and state.cool_until <= now:
                state.cool_until = 0.0
                if state.breaker == CLOSED:
                    self._unavailable.discard(deployment_id)
        delay = TICK_SECONDS
        interval = self.config.active.interval
        for deployment_id in self._checked:
            state = self._states.get(deployment_id) or self._create(deployment_id)
            if state is None or state.checking:
                continue
            if now >= state.next_check:
                state.next_check = now + interval
                state.checking = True
                self._spawn(self._check(self._deployments[deployment_id], state))
            delay = min(delay, state.next_check - now)
        return max(delay, 0.01)

    async def _check(self, deployment: Deployment, state: DeploymentState) -> None:
        """One active check of ``deployment`` (with Redis: unless another replica has this interval's)."""
        try:
            if self._redis is not None and not await self._claim(deployment.id):
                return
            failure, message = await self._probe(deployment)
            if self._states.get(deployment.id) is state:  # not reloaded away meanwhile
                self._record_check(state, failure, message)
        finally:
            state.checking = False

    async def _claim(self, deployment_id: str) -> bool:
        from coredis.tokens import PureToken

        from gateway_core.store.kv import RedisUnavailable

        assert self._redis is not None
        hold = max(1, int(self.config.active.interval * 900))  # ms, a little under the interval
        try:
            return bool(
                await self._redis.run(
                    lambda client: client.set(
                        check_lock_key(deployment_id), self.origin, condition=PureToken.NX, px=hold
                    )
                )
            )
        except RedisUnavailable:
            return True  # every replica checks while Redis is away
        except Exception as exc:
            log.warning("health: cannot take the check of %s in Redis: %s", deployment_id, _describe(exc))
            return True

    async def _probe(
        self, deployment: Deployment
    ) -> tuple[tuple[FailureKind, float | None] | None, str | None]:
        """Run the provider's check within the timeout: ``(failure or None, message)``."""
        timeout = self.config.active.timeout
        try:
            async with asyncio.timeout(timeout):
                await deployment.provider.health_check()
        except GatewayError as exc:
            # A client-side refusal (400) still shows the upstream answering: that passes.
            return upstream_failure(exc), exc.message
        except TimeoutError:
            return ("timeout", None), f"No answer within {timeout:g} s."
        except Exception as exc:
            log.warning("health: the check of %s raised %s", deployment.id, type(exc).__name__)
            return upstream_failure(exc), f"The check failed: {type(exc).__name__}."
        return None, None

    def _record_check(
        self, state: DeploymentState, failure: tuple[FailureKind, float | None] | None, message: str | None
    ) -> None:
        now = self._now()
        state.check_at = self._wall()
        state.check_ok = failure is None
        state.check_error = None if failure is None else message
        if failure is None:
            if state.breaker != CLOSED:
                self._close(state, now, "the health check passed")
            else:
                self._share(state)
            return
        kind, retry_after = failure
        state.last_error = kind
        if kind == "rate_limited":
            if retry_after:
                self._cool(state, now, retry_after)  # shares the state
            else:
                self._share(state)
        elif state.breaker == OPEN:
            self._share(state)
        else:
            self._open(state, now, f"the health check failed ({kind})")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _datetime(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, UTC)


def _number(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
