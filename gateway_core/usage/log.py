"""The usage log: one record per request, queued on the request path and written in batches.

:meth:`UsageLog.record` is all the request path does: it turns the finished request into a record and
puts it on a bounded in-memory queue (never waiting, never raising). A background writer takes up to
``batch_size`` records (or what came within ``flush_seconds``) and stores them with their hourly
rollups in one transaction.

Nothing is lost: when the queue is full, records go to a bounded overflow buffer that a second task
appends to the spool (JSON-lines files on disk); while the database is unreachable, the writer's
batches go to the spool too. The spool is replayed, oldest first, at start-up, when the database
answers again and every minute while it holds records. Inserts are idempotent (each record carries a
unique ``event_id``), so a record replayed twice is stored once. Only a spool that cannot be written
(a full disk) loses records; they are counted as ``dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway_core.config import UsageConfig
from gateway_core.store.database import Database, DatabaseUnavailable
from gateway_core.usage.records import UsageEntry, entry_from_context
from gateway_core.usage.retention import apply_retention
from gateway_core.usage.spool import Spool
from gateway_core.usage.storage import write_batch

if TYPE_CHECKING:
    from gateway_core.types import RequestContext

log = logging.getLogger("lockgate.usage")

#: Seconds between two maintenance rounds (replaying a leftover spool, retention when it is due).
MAINTENANCE_SECONDS = 60.0
#: Seconds between two retention runs.
RETENTION_SECONDS = 3600.0
#: Tries of a batch that lost a PostgreSQL deadlock or serialization conflict with another writer.
CONFLICT_TRIES = 3


@dataclass(slots=True)
class UsageCounters:
    """What the usage log did since start-up (this process)."""

    #: Records accepted by :meth:`UsageLog.record`.
    queued: int = 0
    #: Records the writer stored in the database.
    written: int = 0
    #: Records written to the spool (queue full, database unreachable, or shutting down).
    spooled: int = 0
    #: Records stored in the database from the spool (duplicates of stored records not counted).
    replayed: int = 0
    #: Records lost: the spool could not be written (disk full) or held a torn line.
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class UsageLog:
    """The usage log of one gateway (``gateway.usage_log``); see the module's description."""

    def __init__(
        self, database: Database, config: UsageConfig, spool_dir: Path, *, stop_timeout: float = 30.0
    ) -> None:
        self.database = database
        self.config = config
        self.spool = Spool(spool_dir, UsageEntry.from_json)
        self.stop_timeout = stop_timeout
        self.counters = UsageCounters()
        self._batch_size = config.batch_size
        self._queue_size = config.queue_size
        self._queue: deque[UsageEntry] = deque()
        self._overflow: deque[UsageEntry] = deque()
        self._in_flight: list[UsageEntry] = []
        self._spooling: list[UsageEntry] = []
        #: When the oldest record of the queue came (records left by a full batch keep the time of the
        #: batch's first): a partial batch is written ``flush_seconds`` after it at the latest.
        self._queued_since = 0.0
        self._wakeup = asyncio.Event()
        self._overflow_wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._replay_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self._replays: set[asyncio.Task[Any]] = set()
        self._started = False
        self._stopping = False
        self._hurry = False
        self._closed = False
        self._last_retention = 0.0
        database.on_recover(self._database_recovered)

    # --- the request path ------------------------------------------------------------------------------

    def record(self, ctx: RequestContext) -> None:
        """Queue the usage record of a finished request. Never waits and never raises."""
        try:
            self.record_entry(entry_from_context(ctx))
        except Exception as exc:  # the request must not fail for its record
            self.counters.dropped += 1
            log.error("a usage record could not be built: %s: %s", type(exc).__name__, exc)

    def record_entry(self, entry: UsageEntry) -> None:
        """Queue a record built already (``record`` builds it from a request)."""
        self.counters.queued += 1
        if self._closed:  # after the stop: to the spool, closed at once, replayed at the next start
            self._spool_now([entry])
            self.spool.rotate()
            return
        if len(self._queue) < self._queue_size:
            if not self._queue:
                self._queued_since = time.monotonic()
            self._queue.append(entry)
            self._idle.clear()
            if len(self._queue) == 1 or len(self._queue) >= self._batch_size:
                self._wakeup.set()
        elif len(self._overflow) < self._queue_size:
            self._overflow.append(entry)
            self._idle.clear()
            self._overflow_wakeup.set()
        else:  # both full: the disk is the only place left, even if writing to it takes a moment
            self._spool_now([entry])

    # --- life cycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer, the spooler and the maintenance task, and replay what the spool holds."""
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._writer(), name="lockgate-usage-writer"),
            loop.create_task(self._spooler(), name="lockgate-usage-spooler"),
            loop.create_task(self._maintenance(), name="lockgate-usage-maintenance"),
        ]
        if self.database.healthy:
            self._replay_soon()

    async def stop(self) -> None:
        """Write everything queued (to the database, else the spool) within ``stop_timeout`` seconds,
        then stop. What is left when the time is up goes to the spool."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._stopping = True
        self._wakeup.set()
        self._overflow_wakeup.set()
        writer, spooler, maintenance = self._tasks
        for task in (maintenance, *self._replays):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(maintenance, *self._replays, return_exceptions=True)
        done, _ = await asyncio.wait({writer, spooler}, timeout=self.stop_timeout)
        for task in (writer, spooler):
            if task not in done:
                task.cancel()
        await asyncio.gather(writer, spooler, return_exceptions=True)
        self._closed = True
        left = [*self._in_flight, *self._spooling, *self._queue, *self._overflow]
        self._in_flight, self._spooling, self._queue, self._overflow = [], [], deque(), deque()
        if left:
            log.warning("usage log: %d record(s) not written in time go to the spool", len(left))
            self._spool_now(left)
        self.spool.close()
        self._idle.set()

    async def flush(self) -> None:
        """Wait until every record queued so far is stored (or spooled)."""
        if not self._started or self._closed:
            return
        self._hurry = True
        self._wakeup.set()
        await self._idle.wait()

    @property
    def pending(self) -> int:
        """Records in memory, not stored or spooled yet."""
        return len(self._queue) + len(self._overflow) + len(self._in_flight) + len(self._spooling)

    async def unstored(self) -> list[UsageEntry]:
        """The records of this process not known to be stored yet: queued, being written or spooled
        (a spooled record being replayed right now may be stored already)."""
        spooled = await asyncio.to_thread(self.spool.peek)
        return [*self._queue, *self._overflow, *self._in_flight, *self._spooling, *spooled]

    def status(self) -> dict[str, Any]:
        """The counters and the backlog (``GET /ready``)."""
        return {
            **self.counters.as_dict(),
            "pending": self.pending,
            "spool_files": len(self.spool.segments()),
            "failed_spool_files": len(self.spool.failed_segments()),
        }

    # --- writing -------------------------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                return
            self._in_flight = batch
            try:
                await self._store(batch)
            finally:
                self._in_flight = []
                self._check_idle()

    async def _next_batch(self) -> list[UsageEntry]:
        """The next batch: up to ``batch_size`` records, waiting until ``flush_seconds`` after the
        oldest came at most (not longer when the previous write took a while); empty when stopping with
        nothing left."""
        while not self._queue:
            if self._stopping:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._queued_since + self.config.flush_seconds
        while len(self._queue) < self._batch_size and not (self._stopping or self._hurry):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        count = min(self._batch_size, len(self._queue))
        return [self._queue.popleft() for _ in range(count)]

    async def _store(self, batch: list[UsageEntry]) -> None:
        if self.database.healthy:
            try:
                # Counted once committed: a batch whose commit is not confirmed goes to the spool, whose
                # replay stores (and counts) only the records the database does not hold yet.
                self.counters.written += await self._write(batch)
            except DatabaseUnavailable:
                pass  # the database is probed; the spool is replayed when it answers
            except Exception as exc:
                log.error(
                    "usage log: %d record(s) could not be stored (%s: %s): spooled for a later replay",
                    len(batch),
                    type(exc).__name__,
                    exc,
                )
            else:
                return
        await self._spool(batch)

    async def _write(self, batch: Sequence[UsageEntry]) -> int:
        """Store ``batch`` with its rollups in one transaction (bounded by the database's
        ``write_timeout``); returns the records that were new, once committed."""
        for attempt in range(1, CONFLICT_TRIES + 1):
            try:
                return await self.database.write(
                    partial(write_batch, dialect=self.database.dialect, entries=batch)
                )
            except Exception as exc:
                if attempt == CONFLICT_TRIES or not _is_conflict(exc):
                    raise
                await asyncio.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    # --- the spool ------------------------------------------------------------------------------------------

    async def _spooler(self) -> None:
        """Move the overflow buffer to the spool."""
        while True:
            if not self._overflow:
                if self._stopping:
                    return
                self._overflow_wakeup.clear()
                await self._overflow_wakeup.wait()
                continue
            entries = self._spooling = list(self._overflow)
            self._overflow.clear()
            try:
                await self._spool(entries)
            finally:
                self._spooling = []
                self._check_idle()

    async def _spool(self, entries: list[UsageEntry]) -> None:
        try:
            await asyncio.to_thread(self.spool.append, entries)
        except OSError as exc:
            self.counters.dropped += len(entries)
            log.error("usage log: %d record(s) lost: the spool cannot be written: %s", len(entries), exc)
        else:
            self.counters.spooled += len(entries)

    def _spool_now(self, entries: list[UsageEntry]) -> None:
        try:
            self.spool.append(entries)
        except OSError as exc:
            self.counters.dropped += len(entries)
            log.error("usage log: %d record(s) lost: the spool cannot be written: %s", len(entries), exc)
        else:
            self.counters.spooled += len(entries)

    def _check_idle(self) -> None:
        if not (self._queue or self._overflow or self._in_flight or self._spooling):
            self._hurry = False
            self._idle.set()

    # --- replay and maintenance ------------------------------------------------------------------------

    def _database_recovered(self) -> None:
        if self._started and not self._closed:
            self._replay_soon()

    def _replay_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.replay(), name="lockgate-usage-replay")
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

    async def replay(self) -> int:
        """Store the spool's records, oldest first; returns how many were new.

        Stops at the first outage (the rest waits for the next replay). A segment the database
        refuses for another reason is set aside as ``*.failed``.
        """
        replayed = 0
        async with self._replay_lock:
            await asyncio.to_thread(self.spool.rotate)
            for path in self.spool.segments():
                with self.spool.claim(path) as segment:
                    if segment is None:
                        continue
                    entries, malformed = await asyncio.to_thread(segment.read)
                    if malformed:
                        self.counters.dropped += malformed
                        log.error("usage log: %s: %d malformed line(s) skipped", path.name, malformed)
                    try:
                        for start in range(0, len(entries), self._batch_size):
                            new = await self._write(entries[start : start + self._batch_size])
                            self.counters.replayed += new
                            replayed += new
                    except DatabaseUnavailable:
                        return replayed
                    except Exception as exc:
                        failed = await asyncio.to_thread(segment.set_aside)
                        log.error(
                            "usage log: spool file %s could not be replayed (%s: %s): set aside as %s",
                            path.name,
                            type(exc).__name__,
                            exc,
                            failed.name,
                        )
                        continue
                    await asyncio.to_thread(segment.remove)
            await asyncio.to_thread(self.spool.prune)
        if replayed:
            log.info("usage log: %d record(s) replayed from the spool", replayed)
        return replayed

    async def _maintenance(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_SECONDS)
            if not self.database.healthy:
                continue
            try:
                if self.spool.segments() and not self._replay_lock.locked():
                    await self.replay()
                if time.monotonic() - self._last_retention >= RETENTION_SECONDS or not self._last_retention:
                    self._last_retention = time.monotonic()
                    deleted = await apply_retention(
                        self.database, self.config.retention_days, self.config.rollup_retention_days
                    )
                    if any(deleted.values()):
                        log.info("usage retention: deleted %s", deleted)
            except DatabaseUnavailable:
                continue
            except Exception as exc:
                log.error("usage log maintenance failed: %s: %s", type(exc).__name__, exc)


def _is_conflict(exc: BaseException) -> bool:
    """A PostgreSQL deadlock or serialization failure between concurrent writers: worth a retry."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "sqlstate", None) in ("40P01", "40001"):
            return True
        current = current.__cause__ or current.__context__
    return False


__all__ = ["UsageCounters", "UsageLog"]
