"""Balancer state shared by every worker and replica through Redis: in-flight calls and latencies.

With a ``redis`` section, each gateway runs one background task that every :data:`INTERVAL` seconds
writes this worker's numbers per deployment (calls in flight, latency moving average) into one Redis
hash (a field per worker, dropped when the worker has not written for :data:`TTL` seconds) and reads
everyone's back in the same script. Deployments then carry the other workers' numbers
(``peer_in_flight``, ``peer_latency``), which ``least_connections`` and ``lowest_latency`` add to
their own. Requests never wait on Redis: they read numbers at most one interval old.

While Redis is out of reach the peers' numbers are dropped and balancers use this worker's alone
(logged once per outage). Which strategies use the shared numbers is their own choice: a balancer
class with ``shares_state = True`` asks for the sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from gateway_core.routing import Deployment, ModelGroup
    from gateway_core.store.kv import SharedRedis

log = logging.getLogger("lockgate.balancer_sync")

#: Seconds between two syncs.
INTERVAL = 0.75
#: Seconds after which a worker that stopped writing no longer counts.
TTL = 5.0
#: The hash of every worker's numbers and the sorted set of when each wrote last (one hash tag, so
#: the script runs on one Redis Cluster slot).
STATE_KEY = "lockgate:{balancer}:state"
SEEN_KEY = "lockgate:{balancer}:seen"

# KEYS: state hash, seen set. ARGV: worker id, its numbers (JSON), TTL in milliseconds.
# Writes the worker's numbers, drops workers silent for longer than the TTL, returns every worker's.
_SYNC = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
for _, worker in ipairs(stale) do
  redis.call('HDEL', KEYS[1], worker)
  redis.call('ZREM', KEYS[2], worker)
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
redis.call('PEXPIRE', KEYS[2], ttl * 2)
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: state hash, seen set. ARGV: worker id. A worker leaving takes its numbers with it.
_LEAVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


def numbers_of(deployments: Iterable[Deployment]) -> dict[str, list[Any]]:
    """This worker's ``[in flight, latency]`` per deployment id (deployments with neither left out)."""
    return {
        deployment.id: [deployment.in_flight, deployment.latency]
        for deployment in deployments
        if deployment.in_flight or deployment.latency is not None
    }


def apply_peers(deployments: Iterable[Deployment], peers: Iterable[dict[str, Any]]) -> None:
    """Set each deployment's ``peer_*`` numbers from the other workers' (sums and means)."""
    in_flight: dict[str, int] = {}
    latency: dict[str, list[float]] = {}
    for numbers in peers:
        for deployment_id, entry in numbers.items():
            if not isinstance(entry, list) or len(entry) != 2:
                continue
            count, average = entry
            if isinstance(count, int) and count > 0:
                in_flight[deployment_id] = in_flight.get(deployment_id, 0) + count
            if isinstance(average, int | float) and average >= 0:
                latency.setdefault(deployment_id, []).append(float(average))
    for deployment in deployments:
        deployment.peer_in_flight = in_flight.get(deployment.id, 0)
        averages = latency.get(deployment.id)
        deployment.peer_latency = sum(averages) / len(averages) if averages else None
        deployment.peer_latency_count = len(averages) if averages else 0


def forget_peers(deployments: Iterable[Deployment]) -> None:
    """Back to this worker's own numbers."""
    for deployment in deployments:
        deployment.peer_in_flight = 0
        deployment.peer_latency = None
        deployment.peer_latency_count = 0


class BalancerSync:
    """The periodic exchange of one gateway's balancer numbers with the other workers."""

    def __init__(
        self,
        redis: SharedRedis,
        groups: Callable[[], Iterable[ModelGroup]],
        *,
        interval: float = INTERVAL,
        ttl: float = TTL,
    ) -> None:
        """``groups()`` gives the current model groups (they change when deployments reload)."""
        self.redis = redis
        self.groups = groups
        self.interval = interval
        self.ttl = ttl
        #: This worker's field in the shared hash.
        self.worker = uuid.uuid4().hex
        self.syncs = 0
        self._sync = redis.script(_SYNC)
        self._leave = redis.script(_LEAVE)
        #: Whether the last sync reached Redis (None before the first).
        self.connected: bool | None = None
        self._task: asyncio.Task[None] | None = None

    def shared_deployments(self) -> list[Deployment]:
        """The deployments of groups whose balancer uses shared numbers."""
        return [
            deployment
            for group in self.groups()
            if getattr(group.balancer, "shares_state", False)
            for deployment in group.deployments
        ]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lockgate-balancer-sync")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        try:
            await self._leave([STATE_KEY, SEEN_KEY], [self.worker])
        except Exception as exc:  # its numbers then expire with the TTL
            log.debug("leaving the shared balancer state failed: %s", exc)

    async def _run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sharing the balancers' numbers failed")
                forget_peers(self.shared_deployments())
            await asyncio.sleep(self.interval)

    async def sync_once(self) -> bool:
        """Write this worker's numbers and read the others'; False when Redis was out of reach."""
        from gateway_core.store.kv import RedisUnavailable

        deployments = self.shared_deployments()
        if not deployments:
            return True
        payload = orjson.dumps(numbers_of(deployments))
        try:
            answer = await self._sync([STATE_KEY, SEEN_KEY], [self.worker, payload, int(self.ttl * 1000)])
        except RedisUnavailable as exc:
            forget_peers(deployments)
            if self.connected is not False:
                log.warning("balancers use this worker's numbers only until Redis is back (%s)", exc)
            self.connected = False
            return False
        if self.connected is False:
            log.info("balancers share their numbers through Redis again")
        self.connected = True
        apply_peers(deployments, self._peers(answer))
        self.syncs += 1
        return True

    def _peers(self, answer: Any) -> list[dict[str, Any]]:
        """The other workers' numbers from the script's flat ``[field, value, ...]`` answer."""
        items = (
            list(answer.items())
            if isinstance(answer, dict)
            else list(zip(answer[::2], answer[1::2], strict=True))
        )
        peers = []
        for field, value in items:
            worker = field.decode() if isinstance(field, bytes) else str(field)
            if worker == self.worker:
                continue
            try:
                numbers = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(numbers, dict):
                peers.append(numbers)
        return peers
