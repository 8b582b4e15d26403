"""A small broadcast bus: notifications every replica of the gateway must see.

Without Redis the bus is in-process: a message reaches the subscribers of this worker only. With
``redis.url`` configured, messages go through Redis pub/sub (coredis) and reach every worker of every
replica subscribed to the channel, this one included.

Delivery is at most once and best effort, like Redis pub/sub itself. A Redis outage never breaks the
caller: :meth:`Events.publish` logs it and still delivers locally, the listener reconnects with a
back-off, and after a reconnection every :meth:`Events.on_reconnect` callback runs so subscribers can
drop or reload what they cache (messages published while the connection was down are lost).

Channels in use: ``lockgate:keys`` (API key changes, read by the ``api_keys`` plugin),
``lockgate:deployments`` (deployments and routing rules changed: every gateway reloads its models),
``lockgate:health`` (a deployment's circuit breaker changed: every gateway applies the new state) and
``lockgate:prices`` (price overrides changed: every gateway reloads them).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway_core.config import redact_url

log = logging.getLogger("lockgate.events")

#: Deployments or routing rules changed in the database: every gateway reloads its models.
DEPLOYMENTS_CHANNEL = "lockgate:deployments"
#: API keys, users or organizations changed: every gateway drops the keys named from its cache.
KEYS_CHANNEL = "lockgate:keys"
#: A deployment's circuit breaker or cool-down changed: every gateway applies the new state.
HEALTH_CHANNEL = "lockgate:health"
#: Price overrides changed in the database: every gateway reloads them into its price table.
PRICES_CHANNEL = "lockgate:prices"

#: A subscriber: called with the message (a dict); may be ``async``.
Callback = Callable[[dict[str, Any]], Any]

#: Longest wait for Redis when publishing; the caller goes on without it after this.
PUBLISH_TIMEOUT = 2.0
#: Back-off between reconnection attempts, from first to longest.
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
#: How often the listener looks for channels subscribed since it connected.
_POLL_SECONDS = 0.1


class Events:
    """Publish and subscribe to broadcast notifications (in-process, or through Redis).

    ``subscribe`` may be called before or after :meth:`start`. Callbacks run in the gateway's event
    loop; an exception in one is logged and does not affect the others.
    """

    def __init__(self, redis_url: str | None = None) -> None:
        self.redis_url = redis_url
        #: Identifies this instance in the messages it sends, so it does not deliver them twice.
        self.origin = uuid.uuid4().hex
        self._subscribers: dict[str, list[Callback]] = {}
        self._reconnect_callbacks: list[Callable[[], Any]] = []
        self._client: Any = None
        self._subscribed: set[str] = set()
        self._listener: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connected: asyncio.Event | None = None  # made in start(), in the gateway's loop
        self._stopping = False

    @property
    def client_name(self) -> str:
        """The name of this instance's Redis connections (``CLIENT LIST``)."""
        return f"lockgate-events-{self.origin[:12]}"

    @property
    def mode(self) -> str:
        """``redis`` or ``local``."""
        return "redis" if self.redis_url else "local"

    @property
    def connected(self) -> bool:
        """Whether the Redis subscription is up (always True in-process)."""
        return self.redis_url is None or (self._connected is not None and self._connected.is_set())

    # --- subscribing --------------------------------------------------------------------------------

    def subscribe(self, channel: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(message)`` for every message on ``channel``; returns an unsubscribe function."""
        callbacks = self._subscribers.setdefault(channel, [])
        callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)

        return unsubscribe

    async def wait_subscribed(self, within: float = 2.0) -> None:
        """Wait (bounded) until the Redis listener follows every channel subscribed so far.

        The gateway calls it after the plugins' start-up, so a message published right after a
        replica reports ready (a key revocation, say) is not missed. No-op in-process or while Redis
        is unreachable.
        """
        if self._client is None or not self.connected:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while set(self._subscribers) - self._subscribed and loop.time() < deadline:  # noqa: ASYNC110 - the listener task updates the set
            await asyncio.sleep(0.005)

    def on_reconnect(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` (sync or async) after the Redis connection came back from an outage."""
        self._reconnect_callbacks.append(callback)

    # --- publishing -----------------------------------------------------------------------------------

    async def publish(self, channel: str, message: Mapping[str, Any]) -> None:
        """Send ``message`` (JSON-serialisable) to every subscriber of ``channel``, on every replica.

        This worker's subscribers have run when it returns (async ones awaited). Other replicas get it
        through Redis within milliseconds; when Redis is unreachable that is logged, never raised.
        """
        payload = dict(message)
        data = orjson.dumps({"origin": self.origin, "message": payload})  # not JSON: TypeError, always
        if self._client is not None:
            try:
                if not self.connected and not await self._reachable():
                    raise ConnectionError("Redis does not accept connections")
                await asyncio.wait_for(self._client.publish(channel, data), PUBLISH_TIMEOUT)
            except Exception as exc:
                log.warning(
                    "events: cannot publish on %s through Redis (%s): other replicas will not see it",
                    channel,
                    _describe(exc),
                )
        await self._deliver(channel, payload)

    # --- life cycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Redis (when configured) and start listening. Redis being down is not an error."""
        self._stopping = False
        self._connected = asyncio.Event()
        if self.redis_url is None:
            self._connected.set()
            return
        import coredis

        self._client = coredis.Redis.from_url(
            self.redis_url,
            connect_timeout=PUBLISH_TIMEOUT,
            stream_timeout=PUBLISH_TIMEOUT,
            client_name=self.client_name,  # tells this gateway's connections apart in CLIENT LIST
        )
        started = asyncio.Event()
        self._listener = asyncio.get_running_loop().create_task(self._listen(started), name="lockgate-events")
        # Wait briefly for the subscription, so messages published right after start-up arrive.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(started.wait(), PUBLISH_TIMEOUT)

    async def stop(self) -> None:
        """Stop listening, let running callbacks finish (briefly) and close the connection."""
        self._stopping = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
            for task in self._tasks:
                task.cancel()
        self._client = None
        if self._connected is not None:
            self._connected.clear()

    async def _listen(self, started: asyncio.Event) -> None:
        """Own the Redis client: (re)subscribe to every channel, dispatch messages, reconnect."""
        assert self.redis_url is not None
        assert self._connected is not None
        attempt = 0
        was_connected = False
        async with self._client:
            started_once = False
            while not self._stopping:
                try:
                    if not await self._reachable():
                        raise ConnectionError("Redis does not accept connections")
                    async with self._client.pubsub(
                        ignore_subscribe_messages=True, retry_policy=None
                    ) as pubsub:
                        subscribed: set[str] = set()
                        self._subscribed = subscribed
                        channels = set(self._subscribers)
                        if channels:
                            await pubsub.subscribe(*channels)
                            subscribed |= channels
                        else:  # nothing to listen to yet: check the connection all the same
                            await self._client.ping()
                        self._connected.set()
                        if attempt or was_connected:
                            log.info("events: connected to %s again", redact_url(self.redis_url))
                            self._run_reconnect_callbacks()
                        attempt = 0
                        was_connected = True
                        if not started_once:
                            started_once = True
                            started.set()
                        while True:
                            new = set(self._subscribers) - subscribed
                            if new:
                                await pubsub.subscribe(*new)
                                subscribed |= new
                            message = await pubsub.get_message(timeout=_POLL_SECONDS)
                            if message is not None and message.get("type") == "message":
                                self._on_redis_message(message)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._connected.clear()
                    delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                    if attempt == 0:
                        log.warning(
                            "events: Redis %s unreachable (%s): retrying, local delivery only meanwhile",
                            redact_url(self.redis_url),
                            _describe(exc),
                        )
                    attempt += 1
                    if not started_once:
                        started_once = True
                        started.set()  # start-up goes on without Redis
                    await asyncio.sleep(delay)

    async def _reachable(self) -> bool:
        """Whether Redis accepts a TCP connection now.

        Checked before coredis connects while Redis is out of reach: a connection attempt that fails
        inside coredis leaves resources unclosed, a plain socket that fails does not.
        """
        assert self.redis_url is not None
        parts = urlsplit(self.redis_url)
        try:
            if parts.scheme == "unix":
                connecting = asyncio.open_unix_connection(parts.path)
            else:
                connecting = asyncio.open_connection(parts.hostname or "localhost", parts.port or 6379)
            _, writer = await asyncio.wait_for(connecting, PUBLISH_TIMEOUT)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def _on_redis_message(self, message: Mapping[str, Any]) -> None:
        channel = message.get("channel")
        data = message.get("data")
        try:
            envelope = orjson.loads(data)  # type: ignore[arg-type]
            payload = envelope["message"]
            origin = envelope.get("origin")
            if not isinstance(payload, dict):
                raise ValueError("the message is not an object")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("events: ignored a malformed message on %r: %s", channel, exc)
            return
        if origin == self.origin:
            return  # delivered locally when it was published
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        self._spawn(self._deliver(name, payload))  # the listener does not wait for subscribers

    async def _deliver(self, channel: str, message: dict[str, Any]) -> None:
        for callback in list(self._subscribers.get(channel, ())):
            try:
                result = callback(dict(message))
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.error("events: a subscriber of %r failed: %s", channel, _describe(exc))

    def _run_reconnect_callbacks(self) -> None:
        for callback in list(self._reconnect_callbacks):
            try:
                result = callback()
                if inspect.isawaitable(result):
                    self._spawn(_logged(result, "reconnect"))
            except Exception as exc:
                log.error("events: a reconnection callback failed: %s", _describe(exc))

    def _spawn(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _logged(awaitable: Any, channel: str) -> None:
    try:
        await awaitable
    except Exception as exc:
        log.error("events: a subscriber of %r failed: %s", channel, _describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
