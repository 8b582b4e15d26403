"""The shared Redis client of a worker: counters, limits and state every replica must agree on.

One :class:`SharedRedis` per gateway (``gateway.redis``, None without a ``redis`` section). It owns
one coredis client (``Redis``, or ``RedisCluster`` with ``redis.cluster: true``) for the worker's
life, runs Lua scripts and plain commands with a short timeout, and tells callers at once when Redis
is out of reach: after a failure, calls raise :class:`RedisUnavailable` without touching the network
until a background probe finds Redis accepting connections again, so an outage costs the request
path nothing but the fallback the caller chose (fail-open or fail-closed).

Keys of one logical scope share a hash tag (``{...}``) so multi-key scripts work on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway_core.config import RedisConfig, redact_url

log = logging.getLogger("lockgate.redis")

T = TypeVar("T")

#: Seconds between reachability probes while Redis is down.
PROBE_SECONDS = 1.0


class RedisUnavailable(Exception):
    """Redis cannot be reached now (or did not answer in time)."""


class Script:
    """A Lua script registered once and run by its digest (``EVALSHA``, loaded again when flushed)."""

    def __init__(self, redis: SharedRedis, source: str) -> None:
        self.redis = redis
        self.source = source
        self._script: Any = None

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        async def run(client: Any) -> Any:
            if self._script is None:
                self._script = client.register_script(self.source)
            return await self._script(keys=list(keys), args=list(args))

        return await self.redis.run(run)


class SharedRedis:
    """One worker's connection pool to Redis, with fast failure while Redis is down."""

    def __init__(self, config: RedisConfig, *, name: str = "lockgate") -> None:
        self.config = config
        self.url = config.url
        self.timeout = config.timeout
        self.name = name
        self.client: Any = None
        #: False from a failed call until a probe finds Redis reachable again.
        self.healthy = True
        #: Calls refused or failed because Redis was out of reach (for logs and metrics).
        self.failures = 0
        self._keeper: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._probe: asyncio.Task[None] | None = None
        self._recover_callbacks: list[Callable[[], Any]] = []

    # --- life cycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the client (connections are opened on first use; Redis being down is not an error)."""
        if self._keeper is not None:
            return
        import coredis

        kwargs: dict[str, Any] = {
            "connect_timeout": self.timeout,
            "stream_timeout": self.timeout,
            "retry_policy": coredis.retry.NoRetryPolicy(),
            "client_name": f"{self.name}-shared",
        }
        if self.config.cluster:
            self.client = coredis.RedisCluster.from_url(self.url, **kwargs)
        else:
            self.client = coredis.Redis.from_url(self.url, **kwargs)
        entered = asyncio.Event()
        self._stop = asyncio.Event()
        self._keeper = asyncio.get_running_loop().create_task(self._keep(entered), name="lockgate-redis")
        await entered.wait()

    async def _keep(self, entered: asyncio.Event) -> None:
        # coredis clients are used inside ``async with``; one task holds it open for the worker's life.
        assert self._stop is not None
        async with self.client:
            entered.set()
            await self._stop.wait()

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        if self._keeper is not None and self._stop is not None:
            self._stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._keeper, 5)
        self._keeper = None
        self.client = None

    def on_recover(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` (sync or async) when Redis is reachable again after an outage."""
        self._recover_callbacks.append(callback)

    # --- calls ----------------------------------------------------------------------------------------

    def script(self, source: str) -> Script:
        """A Lua script to run as ``await script(keys, args)``; raises :class:`RedisUnavailable`."""
        return Script(self, source)

    async def run(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        """``await operation(client)`` within the timeout; an outage raises :class:`RedisUnavailable`.

        Errors of the command itself (a script error, a wrong type) are raised as they are.
        """
        if not self.healthy or self.client is None:
            self.failures += 1
            raise RedisUnavailable("Redis is unreachable")
        import coredis.exceptions

        try:
            async with asyncio.timeout(self.timeout):
                return await operation(self.client)
        except (TimeoutError, OSError, coredis.exceptions.ConnectionError) as exc:
            self._mark_down(exc)
            raise RedisUnavailable(f"Redis is unreachable: {type(exc).__name__}") from None

    def _mark_down(self, exc: BaseException) -> None:
        self.failures += 1
        if not self.healthy:
            return
        self.healthy = False
        log.warning(
            "Redis %s unreachable (%s); probing every %.0f s", redact_url(self.url), exc, PROBE_SECONDS
        )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(
                self._wait_for_redis(), name="lockgate-redis-probe"
            )

    async def _wait_for_redis(self) -> None:
        while not await self._reachable():  # noqa: ASYNC110 - polls a socket; nothing to wait on
            await asyncio.sleep(PROBE_SECONDS)
        self.healthy = True
        log.info("Redis %s reachable again", redact_url(self.url))
        for callback in self._recover_callbacks:
            try:
                result = callback()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("a Redis recovery callback failed")

    async def _reachable(self) -> bool:
        parts = urlsplit(self.url)
        try:
            if parts.scheme == "unix":
                connecting = asyncio.open_unix_connection(parts.path)
            else:
                connecting = asyncio.open_connection(parts.hostname or "localhost", parts.port or 6379)
            async with asyncio.timeout(self.timeout):
                _, writer = await connecting
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
