"""Prepaid balances of users and organizations: live balances, top-ups and the billing records.

The database holds every balance (``Balance``) and every movement of one (``BillingRecord``). The
request path reads and changes balances in a live store instead, so it never waits on SQL:

* with a ``redis`` section, in Redis, shared by every replica; atomic Lua scripts reserve, refund
  and top up, one key per owner (``lockgate:balance:{user:ID}``);
* without, in the memory of the worker (right for one process only).

A balance is loaded into the live store from the database the first time it is needed (and, in
memory, for every balance at start-up); an owner without a balance row is remembered as such for
:data:`ABSENT_SECONDS`. Charges change the live balance at once and reach the database through the
:class:`BillingWriter`, in batches off the request path, each charge once (an idempotency key per
charge); what the database cannot take at shutdown, or during a long outage, waits in a spool on
disk and is replayed when a gateway starts and when the database is back. Top-ups change the
database first, then add to the live balance (never overwrite it), under a per-owner lock that
loading takes too, so a top-up is counted exactly once whatever requests are in flight.

While Redis is unreachable, ``redis.on_outage: open`` serves balances from this worker's memory
(loaded from the database); what Redis missed meanwhile is applied to it when it is back.
``closed`` refuses instead (:class:`LedgerUnavailable`).

Live stores count in integer units of 10⁻⁸ USD, the database's precision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F

from gateway_core.store.database import DatabaseUnavailable, is_outage
from gateway_core.store.kv import RedisUnavailable
from gateway_core.store.models import Balance, BillingKind, BillingRecord, OwnerType
from gateway_core.usage.records import new_event_id
from gateway_core.usage.spool import Spool

if TYPE_CHECKING:
    from gateway_core.gateway import Gateway
    from gateway_core.store.database import Database
    from gateway_core.store.kv import SharedRedis

log = logging.getLogger("lockgate.billing")

#: One unit of the live stores, in USD.
UNIT = Decimal("0.00000001")
#: An owner without a balance row is remembered as such for this long (seconds).
ABSENT_SECONDS = 30.0
#: Longest wait for the database when a balance is loaded on the request path (seconds).
LOAD_TIMEOUT = 5.0
#: A per-owner lock frees itself after this long (milliseconds), and is waited for at most
#: :data:`LOCK_WAIT` seconds.
LOCK_TTL_MS = 10_000
LOCK_WAIT = 5.0
#: Longest wait for the last flush of the billing records at shutdown (seconds).
SHUTDOWN_FLUSH_SECONDS = 10.0
#: Seconds between two warnings about billing records waiting for the database.
WARN_EVERY_SECONDS = 30.0
#: Billing records held in memory while the database cannot take them; beyond, they go to the spool.
QUEUE_SIZE = 100_000
#: Seconds between two looks for spool files other workers left.
SPOOL_LOOK_SECONDS = 60.0
#: Event ids looked up per query when a batch is written.
STORED_IDS_PER_QUERY = 500
#: The key of the gateway's ledger in ``gateway.plugin_state``.
STATE_KEY = "billing.ledger"


def to_units(amount: Decimal, rounding: str = ROUND_HALF_UP) -> int:
    """``amount`` USD in units of 10⁻⁸ USD."""
    return int(amount.quantize(UNIT, rounding=rounding).scaleb(8))


def from_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-8)


def format_usd(amount: Decimal) -> str:
    """``amount`` for people: ``12.50 USD``, ``0.00012 USD`` (at least two decimals, at most eight)."""
    quantized = amount.quantize(UNIT)
    if quantized == 0:
        quantized = abs(quantized)
    whole, _, fraction = f"{quantized:f}".partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')} USD"


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a balance: a user or an organization, by the id policies see."""

    type: OwnerType
    id: str

    def __str__(self) -> str:
        return f"{'organization' if self.type is OwnerType.ORG else 'user'} {self.id}"

    @property
    def tag(self) -> str:
        """The Redis hash tag of the owner's keys (one cluster slot per owner)."""
        return f"{{{self.type.value}:{self.id}}}"


# --- live stores ------------------------------------------------------------------------------------


class ReserveStatus(Enum):
    OK = 0
    #: The balance cannot cover the reservation.
    SHORT = 1
    #: The owner has no balance row.
    NO_BALANCE = 2
    #: The store does not know the owner yet: load it from the database.
    UNLOADED = 3


@dataclass(frozen=True, slots=True)
class ReserveResult:
    status: ReserveStatus
    #: The balance in units: after the reservation when OK, as it was when SHORT.
    balance: int = 0


def admits(balance: int, units: int, allow_negative: bool) -> bool:
    """Whether a balance may take a reservation of ``units``.

    A reservation must be covered, unless negative balances are allowed or nothing is reserved (the
    price is unknown): then a balance above zero is enough.
    """
    if allow_negative or units == 0:
        return balance > 0
    return balance >= units


class BalanceStore(ABC):
    """Live balances in units of 10⁻⁸ USD."""

    @abstractmethod
    async def reserve(self, owner: Owner, units: int, allow_negative: bool) -> ReserveResult:
        """Take ``units`` from the balance if :func:`admits` allows it."""

    @abstractmethod
    async def adjust(self, owner: Owner, delta: int) -> int | None:
        """Add ``delta`` (a refund, or a charge when negative) to a loaded balance; None when the owner
        is not loaded (the database is then the truth)."""

    @abstractmethod
    async def top_up(self, owner: Owner, units: int, stored: int) -> int:
        """Add ``units`` to a loaded balance, or load it as ``stored`` (what the database holds,
        the top-up included). Returns the balance."""

    @abstractmethod
    async def load(self, owner: Owner, units: int | None) -> None:
        """Set the balance of an owner this store does not know (``None``: the owner has none)."""

    @abstractmethod
    async def peek(self, owner: Owner) -> int | None:
        """The balance; None when not loaded or absent."""

    @abstractmethod
    def lock(self, owner: Owner) -> contextlib.AbstractAsyncContextManager[None]:
        """Excludes loading and top-ups of one owner from each other."""


class MemoryBalances(BalanceStore):
    """Balances in this worker's memory."""

    def __init__(self) -> None:
        self._units: dict[Owner, int] = {}
        self._absent: dict[Owner, float] = {}  # owner -> monotonic deadline
        self._locks: dict[Owner, asyncio.Lock] = {}

    async def reserve(self, owner: Owner, units: int, allow_negative: bool) -> ReserveResult:
        balance = self._units.get(owner)
        if balance is None:
            deadline = self._absent.get(owner)
            if deadline is not None and deadline > time.monotonic():
                return ReserveResult(ReserveStatus.NO_BALANCE)
            return ReserveResult(ReserveStatus.UNLOADED)
        if not admits(balance, units, allow_negative):
            return ReserveResult(ReserveStatus.SHORT, balance)
        balance -= units
        self._units[owner] = balance
        return ReserveResult(ReserveStatus.OK, balance)

    async def adjust(self, owner: Owner, delta: int) -> int | None:
        balance = self._units.get(owner)
        if balance is None:
            return None
        balance += delta
        self._units[owner] = balance
        return balance

    async def top_up(self, owner: Owner, units: int, stored: int) -> int:
        balance = self._units.get(owner)
        balance = stored if balance is None else balance + units
        self._units[owner] = balance
        self._absent.pop(owner, None)
        return balance

    async def load(self, owner: Owner, units: int | None) -> None:
        if owner in self._units:
            return
        if units is None:
            self._absent[owner] = time.monotonic() + ABSENT_SECONDS
        else:
            self._units[owner] = units
            self._absent.pop(owner, None)

    async def peek(self, owner: Owner) -> int | None:
        return self._units.get(owner)

    @contextlib.asynccontextmanager
    async def lock(self, owner: Owner) -> AsyncIterator[None]:
        lock = self._locks.setdefault(owner, asyncio.Lock())
        async with lock:
            yield

    def clear(self) -> None:
        self._units.clear()
        self._absent.clear()


# Balances are strings of an integer (units) or "none" (no balance row; expires).
_RESERVE = """
local value = redis.call('GET', KEYS[1])
if not value then return {3, 0} end
if value == 'none' then return {2, 0} end
local balance = tonumber(value)
local units = tonumber(ARGV[1])
if ARGV[2] == '1' or units == 0 then
  if balance <= 0 then return {1, value} end
elseif balance < units then
  return {1, value}
end
return {0, redis.call('DECRBY', KEYS[1], ARGV[1])}
"""
_ADJUST = """
local value = redis.call('GET', KEYS[1])
if not value or value == 'none' then return false end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""
_TOP_UP = """
local value = redis.call('GET', KEYS[1])
if value and value ~= 'none' then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
redis.call('SET', KEYS[1], ARGV[2])
return ARGV[2]
"""
_LOAD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[1] == 'none' then
  redis.call('SET', KEYS[1], 'none', 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""
_PEEK = """
local value = redis.call('GET', KEYS[1])
if not value or value == 'none' then return false end
return value
"""
_LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisBalances(BalanceStore):
    """Balances in Redis, shared by every replica; every call may raise ``RedisUnavailable``."""

    def __init__(self, redis: SharedRedis, prefix: str = "lockgate:balance") -> None:
        self.prefix = prefix
        self._reserve = redis.script(_RESERVE)
        self._adjust = redis.script(_ADJUST)
        self._top_up = redis.script(_TOP_UP)
        self._load = redis.script(_LOAD)
        self._peek = redis.script(_PEEK)
        self._lock = redis.script(_LOCK)
        self._unlock = redis.script(_UNLOCK)

    def key(self, owner: Owner) -> str:
        return f"{self.prefix}:{owner.tag}"

    async def reserve(self, owner: Owner, units: int, allow_negative: bool) -> ReserveResult:
        status, balance = await self._reserve([self.key(owner)], [units, "1" if allow_negative else "0"])
        return ReserveResult(ReserveStatus(int(status)), int(balance))

    async def adjust(self, owner: Owner, delta: int) -> int | None:
        result = await self._adjust([self.key(owner)], [delta])
        return None if result is None else int(result)

    async def top_up(self, owner: Owner, units: int, stored: int) -> int:
        return int(await self._top_up([self.key(owner)], [units, stored]))

    async def load(self, owner: Owner, units: int | None) -> None:
        await self._load([self.key(owner)], ["none" if units is None else units, int(ABSENT_SECONDS)])

    async def peek(self, owner: Owner) -> int | None:
        result = await self._peek([self.key(owner)], [])
        return None if result is None else int(result)

    @contextlib.asynccontextmanager
    async def lock(self, owner: Owner) -> AsyncIterator[None]:
        key = f"{self.prefix}-lock:{owner.tag}"
        token = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT
        acquired = False
        while not acquired:
            acquired = await self._lock([key], [token, LOCK_TTL_MS]) == 1
            if not acquired:
                if loop.time() >= deadline:
                    log.warning("the balance lock of %s was not released in time: going on without it", owner)
                    break
                await asyncio.sleep(0.01)
        try:
            yield
        finally:
            if acquired:
                with contextlib.suppress(RedisUnavailable):
                    await self._unlock([key], [token])


# --- the billing records writer ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Movement:
    """A billing record waiting to be written: a charge (negative units) or a refund.

    ``event_id`` is random and unique: the writer stores a movement once, however often it is written.
    """

    owner: Owner
    kind: BillingKind
    units: int
    request_id: str | None
    note: str
    created_at: datetime
    event_id: str = field(default_factory=new_event_id)

    def to_json(self) -> bytes:
        """One line of the spool (without the newline)."""
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "owner_type": self.owner.type.value,
                "owner_id": self.owner.id,
                "kind": self.kind.value,
                "units": self.units,
                "request_id": self.request_id,
                "note": self.note,
                "created_at": self.created_at.isoformat(),
            }
        )

    @classmethod
    def from_json(cls, line: bytes) -> Movement:
        """A movement from a spool line; raises ``ValueError`` (or ``TypeError``/``KeyError``) when
        malformed."""
        data = orjson.loads(line)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        created_at = datetime.fromisoformat(data["created_at"])
        request_id = data["request_id"]
        return cls(
            owner=Owner(OwnerType(data["owner_type"]), str(data["owner_id"])),
            kind=BillingKind(data["kind"]),
            units=int(data["units"]),
            request_id=None if request_id is None else str(request_id),
            note=str(data["note"]),
            created_at=created_at if created_at.tzinfo is not None else created_at.replace(tzinfo=UTC),
            event_id=str(data["event_id"]),
        )


class BillingWriter:
    """Writes charges as billing records and balance updates, in batches off the request path.

    Every ``interval`` seconds (sooner when ``batch_size`` records wait), one transaction per batch
    adds the records and changes the balances. Writes are idempotent: a movement whose ``event_id`` is
    stored already is skipped, and only the records actually inserted change the balances.

    While the database is unreachable records wait in memory and are written once it answers again.
    With a ``spool``, more than ``queue_size`` waiting records, and whatever :meth:`close` cannot
    write, go to the spool on disk; :meth:`start` and the database's recovery replay it through the same
    idempotent write, so a spool replayed twice (a crash before its file was deleted) charges once.
    """

    def __init__(
        self,
        database: Database,
        interval: float = 1.0,
        batch_size: int = 500,
        *,
        spool: Spool[Movement] | None = None,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.database = database
        self.interval = interval
        self.batch_size = batch_size
        self.spool = spool
        self.queue_size = queue_size
        self._queue: deque[Movement] = deque()
        #: Units per owner not in the database yet (subtracted when a balance is loaded): the queued
        #: records and those of the spool files this writer wrote or counted.
        self.pending: dict[Owner, int] = {}
        #: The units per owner of each spool file counted in ``pending``, until it is written.
        self._spooled: dict[Path, dict[Owner, int]] = {}
        self._replay_due = False
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._overflow: asyncio.Task[None] | None = None
        self._warned_at = -WARN_EVERY_SECONDS
        database.on_recover(self._recovered)

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, movement: Movement) -> None:
        self._queue.append(movement)
        self._count(movement.owner, movement.units)
        if len(self._queue) >= self.batch_size:
            self._wake.set()
        if len(self._queue) > self.queue_size and self.spool is not None and self._overflow is None:
            self._overflow = asyncio.get_running_loop().create_task(
                self._spool_queue(), name="lockgate-billing-spooler"
            )

    def _count(self, owner: Owner, units: int) -> None:
        left = self.pending.get(owner, 0) + units
        if left:
            self.pending[owner] = left
        else:
            self.pending.pop(owner, None)

    async def start(self) -> None:
        """Replay the spool, then write in the background. Call it before balances are loaded: while
        the database is unreachable, the spool's records are counted as pending instead."""
        if self.spool is not None:
            try:
                if self.database.healthy:
                    await self.replay()
                else:
                    await self._count_spool()
            except Exception as exc:  # the files stay for the next replay
                log.error("the billing spool could not be read: %s: %s", type(exc).__name__, exc)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lockgate-billing-writer")

    def _recovered(self) -> None:
        self._replay_due = self.spool is not None
        self._wake.set()

    async def _run(self) -> None:
        next_look = time.monotonic() + SPOOL_LOOK_SECONDS
        while True:
            # Not ``wait_for``: it can swallow a cancellation that comes as the event is set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            if self.spool is not None and time.monotonic() >= next_look:
                # Files another worker of this server left (it stopped while the database was down).
                next_look = time.monotonic() + SPOOL_LOOK_SECONDS
                if self.spool.segments():
                    self._replay_due = True
            if await self.flush() and self._replay_due and self.database.healthy:
                try:
                    await self.replay()
                except Exception as exc:
                    log.error("replaying the billing spool failed: %s: %s", type(exc).__name__, exc)

    async def flush(self) -> bool:
        """Write every waiting record; False when some could not be written (they keep waiting)."""
        async with self._flush_lock:
            while self._queue:
                if not self.database.healthy:
                    return False
                batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
                try:
                    await self._write(batch)
                except BaseException as exc:
                    # Also when cancelled: the batch may have been stored, but writing it again is safe.
                    self._queue.extendleft(reversed(batch))
                    if not isinstance(exc, Exception):
                        raise
                    self._report(exc)
                    return False
                for movement in batch:
                    self._count(movement.owner, -movement.units)
            return True

    def _report(self, exc: BaseException) -> None:
        if not isinstance(exc, DatabaseUnavailable) and not is_outage(exc):
            log.error("billing records not written, retrying: %s: %s", type(exc).__name__, exc)
            return
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning(
                "%d billing record(s) wait for the database (%s): written when it answers again",
                len(self._queue),
                exc,
            )

    async def _write(self, batch: list[Movement]) -> int:
        """Store the movements not stored yet and add exactly those to their balances, in one
        transaction bounded by the database's ``write_timeout``; returns how many records were new."""
        return await self.database.write(lambda _transaction: self._store(batch))

    async def _store(self, batch: list[Movement]) -> int:
        """The work of :meth:`_write`, inside its transaction (the ORM's queries run in it)."""
        by_owner: dict[Owner, dict[str, Movement]] = {}
        for movement in batch:
            by_owner.setdefault(movement.owner, {}).setdefault(movement.event_id, movement)
        now = datetime.now(UTC)
        new = 0
        # Rows are locked in one order everywhere, so concurrent writers never deadlock. An owner's
        # row is locked before its event ids are looked up: a writer storing the same movements
        # meanwhile has committed by then.
        for owner in sorted(by_owner, key=lambda o: (o.type.value, o.id)):
            row = await _locked_balance(owner)
            movements = by_owner[owner]
            stored = await _stored_event_ids(list(movements))
            fresh = [movement for event_id, movement in movements.items() if event_id not in stored]
            if not fresh:
                continue
            running = row.amount
            records = []
            for movement in fresh:
                amount = from_units(movement.units)
                running += amount
                records.append(
                    BillingRecord(
                        event_id=movement.event_id,
                        owner_type=owner.type,
                        owner_id=owner.id,
                        kind=movement.kind,
                        amount=amount,
                        balance_after=running,
                        request_id=movement.request_id,
                        note=movement.note,
                        created_at=movement.created_at,
                    )
                )
            total = sum(movement.units for movement in fresh)
            if total:
                await Balance.filter(id=row.id).update(amount=F("amount") + from_units(total), updated_at=now)
            await BillingRecord.bulk_create(records)
            new += len(records)
        return new

    # --- the spool -----------------------------------------------------------------------------------

    async def _spool_queue(self) -> None:
        """Move the queue to the spool (it outgrew ``queue_size``); it stays pending until written."""
        try:
            movements = list(self._queue)
            self._queue.clear()
            if not await self._spool(movements):
                self._queue.extendleft(reversed(movements))
        finally:
            self._overflow = None

    async def _spool(self, movements: list[Movement]) -> bool:
        assert self.spool is not None
        try:
            path = await asyncio.to_thread(self.spool.append, movements)
        except OSError as exc:
            log.error(
                "%d billing record(s) kept in memory: the spool cannot be written: %s", len(movements), exc
            )
            return False
        if path is not None:
            units = self._spooled.setdefault(path, {})
            for movement in movements:
                units[movement.owner] = units.get(movement.owner, 0) + movement.units
        self._replay_due = True
        log.warning("%d billing record(s) spooled to %s until the database takes them", len(movements), path)
        return True

    async def _count_spool(self) -> None:
        """Count the records of the spool's files as pending (the database is unreachable)."""
        assert self.spool is not None
        for path in self.spool.segments():
            if path in self._spooled:
                continue
            with self.spool.claim(path) as segment:
                if segment is None:
                    continue
                movements, _ = await asyncio.to_thread(segment.read)
            units: dict[Owner, int] = {}
            for movement in movements:
                units[movement.owner] = units.get(movement.owner, 0) + movement.units
                self._count(movement.owner, movement.units)
            self._spooled[path] = units
        if self._spooled:
            self._replay_due = True
            log.warning(
                "%d billing spool file(s) wait for the database: replayed when it answers", len(self._spooled)
            )

    def _written(self, path: Path) -> None:
        """The records of a spool file are in the database: they are no longer pending."""
        for owner, units in self._spooled.pop(path, {}).items():
            self._count(owner, -units)

    async def replay(self) -> int:
        """Write the spool's records to the database, oldest file first; returns how many were new.

        Stops at the first outage (the rest waits for the next replay). A file the database refuses for
        another reason is set aside as ``*.failed`` for an operator.
        """
        if self.spool is None or not self.database.healthy:
            return 0
        new = 0
        async with self._flush_lock:
            await asyncio.to_thread(self.spool.rotate)
            for path in self.spool.segments():
                with self.spool.claim(path) as segment:
                    if segment is None:  # written or replayed by another process
                        continue
                    movements, malformed = await asyncio.to_thread(segment.read)
                    if malformed:
                        log.error("billing spool file %s: %d malformed line(s) skipped", path.name, malformed)
                    try:
                        for start in range(0, len(movements), self.batch_size):
                            new += await self._write(movements[start : start + self.batch_size])
                    except Exception as exc:
                        if isinstance(exc, DatabaseUnavailable) or is_outage(exc):
                            self._report(exc)
                            return new
                        failed = await asyncio.to_thread(segment.set_aside)
                        log.error(
                            "billing spool file %s could not be replayed (%s: %s): set aside as %s",
                            path.name,
                            type(exc).__name__,
                            exc,
                            failed.name,
                        )
                        continue
                    await asyncio.to_thread(segment.remove)
                self._written(path)
            await asyncio.to_thread(self.spool.prune)
            present = set(self.spool.segments())
            for path in [path for path in self._spooled if path not in present]:
                self._written(path)  # replayed by another process, or set aside
            self._replay_due = bool(self._spooled)  # files another process is replaying right now
        if new:
            log.info("%d billing record(s) replayed from the spool", new)
        return new

    async def close(self) -> None:
        """Stop the background writes and write what is left (bounded in time); with a spool, what the
        database cannot take goes there, to be replayed at the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._overflow is not None:  # a spool write under way: let it end, it is short
            await self._overflow
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), SHUTDOWN_FLUSH_SECONDS)
        if self._queue and self.spool is not None:
            waiting = list(self._queue)
            if await self._spool(waiting):
                self._queue.clear()
        if self.spool is not None:
            self.spool.close()
        if self._queue:
            log.error(
                "%d billing record(s) could not be written at shutdown: the database is unreachable",
                len(self._queue),
            )


async def _stored_event_ids(event_ids: list[str]) -> set[str]:
    """The ones of ``event_ids`` that billing records hold already."""
    stored: set[str] = set()
    for start in range(0, len(event_ids), STORED_IDS_PER_QUERY):
        chunk = event_ids[start : start + STORED_IDS_PER_QUERY]
        rows = await BillingRecord.filter(event_id__in=chunk).values_list("event_id", flat=True)
        stored.update(str(event_id) for event_id in rows)
    return stored


async def _locked_balance(owner: Owner) -> Balance:
    """The balance row of ``owner``, locked for the transaction (PostgreSQL), created when missing."""
    query = Balance.filter(owner_type=owner.type, owner_id=owner.id)
    row = await query.select_for_update().first()
    if row is None:
        row = await Balance.create(owner_type=owner.type, owner_id=owner.id, amount=Decimal(0))
    return row


# --- the ledger --------------------------------------------------------------------------------------


class LedgerUnavailable(Exception):
    """Balances cannot be checked now (Redis down with ``on_outage: closed``, or the database down
    when a balance must be loaded)."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """Units taken from an owner's balance for one request, until it is settled."""

    owner: Owner
    units: int
    #: Taken from this worker's memory while Redis was unreachable.
    in_fallback: bool = False


@dataclass(frozen=True, slots=True)
class TopUp:
    record: BillingRecord
    balance: Balance
    #: The live balance after the top-up; None when the live store could not be reached.
    live: Decimal | None


class Ledger:
    """The balances of one gateway: reservations, charges and top-ups."""

    def __init__(
        self, database: Database, redis: SharedRedis | None = None, *, on_outage: str = "open"
    ) -> None:
        self.database = database
        self.redis = redis
        self.store: BalanceStore = RedisBalances(redis) if redis is not None else MemoryBalances()
        #: This worker's balances while Redis is unreachable (``on_outage: open``).
        self.fallback: MemoryBalances | None = MemoryBalances() if redis is not None else None
        self.fail_open = on_outage == "open"
        self.writer: BillingWriter | None = None
        #: Reservations made in memory because Redis was unreachable.
        self.fallbacks = 0
        #: Changes Redis missed during an outage, applied when it is back.
        self.missed: dict[Owner, int] = {}
        self._in_outage = False
        self._fallbacks_before = 0
        if redis is not None:
            redis.on_recover(self._redis_back)

    # life cycle

    async def start(
        self,
        *,
        interval: float,
        batch_size: int,
        spool_dir: Path | None = None,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        """Start writing charges (with ``spool_dir``, replaying the spool first); in memory, then load
        every balance, the replayed charges included."""
        if self.writer is None:
            spool = None
            if spool_dir is not None:
                spool = Spool(spool_dir, Movement.from_json)
            self.writer = BillingWriter(
                self.database, interval, batch_size, spool=spool, queue_size=queue_size
            )
            await self.writer.start()
        if self.redis is None:
            await self.preload()

    async def preload(self) -> None:
        try:
            rows = await self.database.run(Balance.all(), time_limit=LOAD_TIMEOUT)
        except DatabaseUnavailable as exc:
            log.warning("balances not loaded at start-up (%s): loaded when first needed", exc)
            return
        for row in rows:
            await self.store.load(Owner(OwnerType(row.owner_type), row.owner_id), to_units(row.amount))
        log.info("%d balance(s) loaded", len(rows))

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.close()
            self.writer = None

    # per request

    async def reserve(self, owner: Owner, units: int, allow_negative: bool) -> Reservation | ReserveResult:
        """Take ``units`` from ``owner``'s balance: a :class:`Reservation`, or why not (SHORT,
        NO_BALANCE). Raises :class:`LedgerUnavailable`."""
        if self.fallback is not None:
            try:
                return await self._reserve(self.store, owner, units, allow_negative, False)
            except RedisUnavailable as exc:
                self._outage(exc)
                if not self.fail_open:
                    raise LedgerUnavailable("Redis is unreachable") from None
                self.fallbacks += 1
                return await self._reserve(self.fallback, owner, units, allow_negative, True)
        return await self._reserve(self.store, owner, units, allow_negative, False)

    async def _reserve(
        self, store: BalanceStore, owner: Owner, units: int, allow_negative: bool, in_fallback: bool
    ) -> Reservation | ReserveResult:
        result = await store.reserve(owner, units, allow_negative)
        if result.status is ReserveStatus.UNLOADED:
            await self._load(store, owner)
            result = await store.reserve(owner, units, allow_negative)
        if result.status is ReserveStatus.OK:
            return Reservation(owner, units, in_fallback)
        if result.status is ReserveStatus.UNLOADED:
            raise LedgerUnavailable(f"the balance of {owner} could not be loaded")
        return result

    async def _load(self, store: BalanceStore, owner: Owner) -> None:
        async with store.lock(owner):
            try:
                row = await self.database.run(
                    Balance.get_or_none(owner_type=owner.type, owner_id=owner.id), time_limit=LOAD_TIMEOUT
                )
            except DatabaseUnavailable as exc:
                raise LedgerUnavailable(f"the balance of {owner} cannot be read: {exc}") from None
            await store.load(owner, None if row is None else to_units(row.amount) + self._pending(owner))
            if store is self.store:
                # Loaded from the database and this worker's unwritten charges: what Redis missed
                # during an outage is in there already.
                self.missed.pop(owner, None)

    def _pending(self, owner: Owner) -> int:
        return 0 if self.writer is None else self.writer.pending.get(owner, 0)

    async def settle(
        self, reservation: Reservation, cost: int, *, request_id: str | None, note: str, record: bool
    ) -> None:
        """Charge ``cost`` units for a reserved request and refund the rest of the reservation;
        with ``record``, write a billing record of the charge (also of a charge of zero)."""
        owner = reservation.owner
        refund = reservation.units - cost
        if reservation.in_fallback:
            assert self.fallback is not None
            if refund:
                await self.fallback.adjust(owner, refund)
            if cost:
                await self._apply_to_redis(owner, -cost)  # Redis never saw this reservation
        elif refund and self.fallback is None:
            await self.store.adjust(owner, refund)
        elif refund:
            await self._apply_to_redis(owner, refund)
        if record and self.writer is not None:
            self.writer.add(Movement(owner, BillingKind.CHARGE, -cost, request_id, note, datetime.now(UTC)))

    async def _apply_to_redis(self, owner: Owner, delta: int) -> None:
        try:
            await self.store.adjust(owner, delta)
        except RedisUnavailable:
            self.missed[owner] = self.missed.get(owner, 0) + delta

    # top-ups and reads

    async def top_up(self, owner: Owner, amount: Decimal, *, note: str, actor: str | None) -> TopUp:
        """Add ``amount`` USD to ``owner``'s balance: a record and the row in the database, then the
        live balance (added to, so charges in flight are kept)."""
        amount = from_units(to_units(amount))
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.store.lock(owner))
            except RedisUnavailable:  # nothing loads into Redis meanwhile; this worker's memory might
                if self.fallback is not None:
                    await stack.enter_async_context(self.fallback.lock(owner))
            try:
                record, row = await self._store_top_up(owner, amount, note, actor)
            except IntegrityError:  # the row was created concurrently: it exists now
                record, row = await self._store_top_up(owner, amount, note, actor)
            units = to_units(amount)
            stored = to_units(row.amount) + self._pending(owner)
            live: int | None
            try:
                live = await self.store.top_up(owner, units, stored)
            except RedisUnavailable:
                live = None
                self.missed[owner] = self.missed.get(owner, 0) + units
            if self.fallback is not None:
                await self.fallback.adjust(owner, units)
        return TopUp(record, row, None if live is None else from_units(live))

    async def _store_top_up(
        self, owner: Owner, amount: Decimal, note: str, actor: str | None
    ) -> tuple[BillingRecord, Balance]:
        async with self.database.transaction():
            row = await _locked_balance(owner)
            await Balance.filter(id=row.id).update(amount=F("amount") + amount, updated_at=datetime.now(UTC))
            await row.refresh_from_db(fields=["amount", "updated_at"])
            record = await BillingRecord.create(
                event_id=new_event_id(),
                owner_type=owner.type,
                owner_id=owner.id,
                kind=BillingKind.TOPUP,
                amount=amount,
                balance_after=row.amount,
                note=note,
                actor=actor,
            )
        return record, row

    async def live(self, owner: Owner) -> Decimal | None:
        """The live balance of ``owner``; None when the live store has not loaded it (or is down)."""
        try:
            units = await self.store.peek(owner)
        except RedisUnavailable:
            return None
        return None if units is None else from_units(units)

    # outages

    def _outage(self, exc: BaseException) -> None:
        if not self._in_outage:
            self._in_outage = True
            self._fallbacks_before = self.fallbacks
            what = "serving balances from this worker's memory" if self.fail_open else "refusing requests"
            log.warning("balances: Redis is unreachable (%s): %s until it is back", exc, what)

    async def _redis_back(self) -> None:
        """Apply what Redis missed and drop the memory balances of the outage."""
        for owner in list(self.missed):
            try:
                async with self.store.lock(owner):  # not while the balance is being loaded
                    delta = self.missed.pop(owner, 0)
                    try:
                        await self.store.adjust(owner, delta)
                    except RedisUnavailable:
                        self.missed[owner] = self.missed.get(owner, 0) + delta
                        raise
            except RedisUnavailable:
                return  # down again: the next recovery applies the rest
        if self.fallback is not None:
            self.fallback.clear()
        if self._in_outage:
            self._in_outage = False
            log.info(
                "balances: Redis is back; %d request(s) were checked in memory meanwhile",
                self.fallbacks - self._fallbacks_before,
            )


def ledger_of(gateway: Gateway) -> Ledger | None:
    """The ledger of a gateway (made on first use); None without a database."""
    if gateway.database is None:
        return None
    ledger: Ledger | None = gateway.plugin_state.get(STATE_KEY)
    if ledger is None:
        on_outage = gateway.config.redis.on_outage if gateway.config.redis is not None else "open"
        ledger = Ledger(gateway.database, gateway.redis, on_outage=on_outage)
        gateway.plugin_state[STATE_KEY] = ledger
    return ledger


__all__ = [
    "QUEUE_SIZE",
    "BillingWriter",
    "Ledger",
    "LedgerUnavailable",
    "Movement",
    "Owner",
    "Reservation",
    "ReserveResult",
    "ReserveStatus",
    "TopUp",
    "format_usd",
    "from_units",
    "ledger_of",
    "to_units",
]
