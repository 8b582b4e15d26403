"""API keys from the database, cached in-process so the request path never waits on SQL.

A key is looked up by its SHA-256 digest: once on a miss (one indexed query, with its user and
organization), then served from the cache. Entries older than ``cache_ttl_seconds`` are still served
while a background lookup refreshes them; when the database is unreachable they stay in use until it
is back. Unknown keys are remembered for ``negative_cache_seconds``; an unknown key that cannot be
checked because the database is down gets 503, not 401.

Revocation reaches every gateway through the events channel ``lockgate:keys`` (Redis pub/sub when
Redis is configured): each gateway drops the key from its cache, and lookups that were in flight when
the message came are not cached. ``last_used_at`` is written in batches, one UPDATE per key every
``last_used_flush_seconds``, and once more at shutdown.

The plugin answers after the other auth plugins (``trylast``) and returns ``None`` for keys it does
not know, so keys from the configuration and from third-party plugins keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from tortoise.expressions import Q

from gateway_core import Gateway, GatewayError, Principal, RequestContext, hookimpl
from gateway_core.dlp.overrides import METADATA_KEY, ORG_METADATA_KEY
from gateway_core.errors import invalid_api_key
from gateway_core.store.database import DatabaseUnavailable
from gateway_core.store.keys import KEYS_CHANNEL, key_digest
from gateway_core.store.models import ApiKey, Organization, User

if TYPE_CHECKING:
    from gateway_core.store.database import Database

NAME = "api_keys"
log = logging.getLogger("lockgate.auth.api_keys")

#: Seconds between two attempts to refresh a stale entry while the database is unreachable.
RETRY_SECONDS = 2.0
#: Seconds between two warnings about the database being unreachable.
WARN_EVERY_SECONDS = 30.0
#: Longest wait for the final ``last_used_at`` flush at shutdown.
SHUTDOWN_FLUSH_SECONDS = 5.0
#: Most organizations above a key's that are loaded for budgets rolled up the tree.
MAX_ORG_DEPTH = 16


class ApiKeysOptions(BaseModel):
    """Options under ``plugins.api_keys``."""

    model_config = ConfigDict(extra="forbid")

    cache_ttl_seconds: float = Field(
        60.0, gt=0, description="after this, a cached key is refreshed in the background"
    )
    negative_cache_seconds: float = Field(
        5.0, ge=0, description="how long an unknown key is answered 401 without asking the database"
    )
    last_used_flush_seconds: float = Field(10.0, gt=0, description="interval of the last_used_at writes")
    lookup_timeout_seconds: float = Field(
        5.0, gt=0, description="longest wait for the database on a cache miss before answering 503"
    )
    max_cached_keys: int = Field(100_000, gt=0, description="cache size; the oldest entries go first")


# --- answers ------------------------------------------------------------------------------------------

REVOKED = "revoked"
EXPIRED = "expired"
USER_DISABLED = "user_disabled"


def _rejection(reason: str) -> GatewayError:
    """A new error each time: raising one instance again and again would grow its traceback."""
    if reason == REVOKED:
        return invalid_api_key("This API key has been revoked.")
    if reason == EXPIRED:
        return invalid_api_key("This API key has expired.")
    return GatewayError(
        403,
        "The user who owns this API key is disabled.",
        type="permission_error",
        code="user_disabled",
    )


def key_database_unavailable() -> GatewayError:
    return GatewayError(
        503,
        "The API key cannot be verified right now: the key database is unreachable. Retry shortly.",
        type="server_error",
        code="auth_unavailable",
        headers={"Retry-After": "2"},
    )


class _Unavailable(Exception):
    """The database did not answer a lookup."""


class CachedKey:
    """What the cache knows about one digest: a principal to accept, or a reason to reject."""

    __slots__ = ("expires_ts", "fresh_until", "principal", "rejection", "retry_at")

    def __init__(
        self, principal: Principal, rejection: str | None, expires_ts: float | None, fresh_until: float
    ) -> None:
        self.principal = principal
        self.rejection = rejection
        self.expires_ts = expires_ts
        self.fresh_until = fresh_until
        self.retry_at = 0.0


def _budget(record: ApiKey | User | Organization | None) -> dict[str, Any] | None:
    if record is None:
        return None
    limit = record.budget_limit
    return {
        "limit": float(limit) if limit is not None else None,
        "period": str(record.budget_period) if record.budget_period is not None else None,
    }


def _owner_settings(record: User | Organization | None, name: str) -> Any:
    """``metadata[name]`` of a user or organization (their ``limits`` and ``quotas``), or None."""
    metadata = record.metadata if record is not None else None
    return metadata.get(name) if isinstance(metadata, dict) else None  # JSON written elsewhere may be any


def _dlp(metadata: Any) -> dict[str, Any] | None:
    """The DLP override kept in a key's or an organization's metadata (``metadata.dlp``), or None."""
    override = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    return override if isinstance(override, dict) else None


def _below(principal: Principal, org_id: str) -> bool:
    """Whether the principal's organization is under ``org_id`` (whose budgets apply to it too)."""
    ancestors = principal.metadata.get("org_ancestors") or ()
    return any(isinstance(a, Mapping) and str(a.get("id")) == org_id for a in ancestors)


def _ancestor(org: Organization) -> dict[str, Any]:
    return {
        "id": str(org.id),
        "name": org.name,
        "budget": _budget(org),
        "quotas": _owner_settings(org, "quotas"),
        "limits": _owner_settings(org, "limits"),
        "dlp": _dlp(org.metadata),
    }


def organization_of(record: ApiKey) -> Organization | None:
    """The key's organization, else its user's."""
    org: Organization | None = record.org
    if org is None and record.user is not None:
        org = record.user.org
    return org


def principal_for(record: ApiKey, ancestors: Sequence[Organization] = ()) -> Principal:
    """The principal of a key record loaded with its user and organization (and the user's).

    ``ancestors`` are the organizations above the key's, nearest first: their budgets, quotas and
    DLP overrides apply to the key too (``metadata.org_ancestors``). The key's own DLP override is
    ``metadata.dlp`` and its organization's ``metadata.org_dlp``, each a dict or absent.
    """
    user: User | None = record.user
    org = organization_of(record)
    metadata: dict[str, Any] = dict(record.metadata or {})
    org_metadata = org.metadata if org is not None else None
    for name, override in ((METADATA_KEY, _dlp(record.metadata)), (ORG_METADATA_KEY, _dlp(org_metadata))):
        metadata.pop(name, None)  # only a dict, never what else the key's metadata holds under the name
        if override is not None:
            metadata[name] = override
    metadata.update(
        key_prefix=record.prefix,
        user_email=user.email if user is not None else None,
        org_name=org.name if org is not None else None,
        org_parent_id=str(org.parent_id) if org is not None and org.parent_id else None,  # type: ignore[attr-defined]
        limits={"rpm": record.rpm_limit, "tpm": record.tpm_limit, "max_parallel": record.max_parallel},
        budgets={"key": _budget(record), "user": _budget(user), "org": _budget(org)},
        user_limits=_owner_settings(user, "limits"),
        org_limits=_owner_settings(org, "limits"),
        user_quotas=_owner_settings(user, "quotas"),
        org_quotas=_owner_settings(org, "quotas"),
        org_ancestors=[_ancestor(ancestor) for ancestor in ancestors],
    )
    allowed = record.allowed_models
    return Principal(
        key_id=str(record.id),
        name=record.name,
        user_id=str(user.id) if user is not None else None,
        org_id=str(org.id) if org is not None else None,
        scopes=frozenset(record.scopes or ()),
        allowed_models=tuple(allowed) if allowed is not None else None,
        metadata=metadata,
    )


def _rejection_of(record: ApiKey) -> str | None:
    if record.revoked_at is not None:
        return REVOKED
    if record.user is not None and not record.user.is_active:
        return USER_DISABLED
    return None


# --- the cache ------------------------------------------------------------------------------------------


class ApiKeyCache:
    """The keys one gateway has seen, their pending lookups and their unwritten ``last_used_at``."""

    def __init__(self, database: Database, options: ApiKeysOptions) -> None:
        self.database = database
        self.options = options
        self.entries: dict[str, CachedKey] = {}
        self.unknown: dict[str, float] = {}  # digest -> monotonic deadline
        self.digest_of: dict[str, str] = {}  # key id -> digest
        self.used: dict[str, float] = {}  # key id -> epoch seconds of the last use
        #: Bumped by every invalidation: a lookup that started before one is not cached.
        self.generation = 0
        self._pending: dict[str, asyncio.Future[CachedKey | None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._warned_at = -WARN_EVERY_SECONDS
        self.unsubscribe: Callable[[], None] | None = None

    # per request

    def authenticate(self, credential: str) -> Principal | Awaitable[Principal | None] | None:
        """The principal of a key, ``None`` for an unknown one; raises for a refused one.

        Answers at once from the cache (no coroutine, no await); only a miss returns an awaitable.
        """
        digest = key_digest(credential)
        now = time.monotonic()
        entry = self.entries.get(digest)
        if entry is None:
            deadline = self.unknown.get(digest)
            if deadline is not None and deadline > now:
                return None
            return self._authenticate_miss(digest)
        if entry.fresh_until <= now and entry.retry_at <= now and digest not in self._pending:
            self._spawn(self._refresh(digest, entry))
        return self._answer(entry)

    async def _authenticate_miss(self, digest: str) -> Principal | None:
        try:
            entry = await self._lookup(digest)
        except _Unavailable:
            raise key_database_unavailable() from None
        return None if entry is None else self._answer(entry)

    def _answer(self, entry: CachedKey) -> Principal:
        if entry.rejection is not None:
            raise _rejection(entry.rejection)
        now = time.time()
        if entry.expires_ts is not None and now >= entry.expires_ts:
            raise _rejection(EXPIRED)
        self.used[entry.principal.key_id] = now
        return entry.principal

    async def _lookup(self, digest: str) -> CachedKey | None:
        """One database lookup per digest at a time; concurrent requests share it."""
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._load(digest))
            self._pending[digest] = pending
            pending.add_done_callback(lambda done: self._settled(digest, done))
        # A client that goes away must not cancel the lookup others wait for.
        return await asyncio.shield(pending)

    def _settled(self, digest: str, done: asyncio.Future[CachedKey | None]) -> None:
        self._pending.pop(digest, None)
        if not done.cancelled():
            done.exception()  # mark it retrieved: the waiters, if any, handle it

    async def _load(self, digest: str) -> CachedKey | None:
        generation = self.generation
        if not self.database.healthy:  # known to be down: answer at once, the probe watches it
            raise _Unavailable
        try:
            record = await self.database.run(
                ApiKey.filter(digest=digest).select_related("user", "org", "user__org").first(),
                time_limit=self.options.lookup_timeout_seconds,
            )
            ancestors = await self._ancestors(record) if record is not None else []
        except DatabaseUnavailable as exc:
            self._warn_unavailable(exc)
            raise _Unavailable from None
        now = time.monotonic()
        if record is None:
            if generation == self.generation and self.options.negative_cache_seconds:
                self._bounded(self.unknown)
                self.unknown[digest] = now + self.options.negative_cache_seconds
            return None
        entry = CachedKey(
            principal_for(record, ancestors),
            _rejection_of(record),
            record.expires_at.timestamp() if record.expires_at is not None else None,
            now + self.options.cache_ttl_seconds,
        )
        if generation == self.generation:
            self._store(digest, entry)
        return entry

    async def _ancestors(self, record: ApiKey) -> list[Organization]:
        """The organizations above the key's, nearest first (a cycle or a deep tree is cut off)."""
        org = organization_of(record)
        chain: list[Organization] = []
        seen = {org.id} if org is not None else set()
        parent_id = org.parent_id if org is not None else None  # type: ignore[attr-defined]
        while parent_id is not None and parent_id not in seen and len(chain) < MAX_ORG_DEPTH:
            seen.add(parent_id)
            parent = await self.database.run(
                Organization.filter(id=parent_id).first(), time_limit=self.options.lookup_timeout_seconds
            )
            if parent is None:
                break
            chain.append(parent)
            parent_id = parent.parent_id  # type: ignore[attr-defined]
        return chain

    async def _refresh(self, digest: str, stale: CachedKey) -> None:
        """Refresh a stale entry; keep serving it while the database is unreachable."""
        try:
            await self._lookup(digest)
        except _Unavailable:
            stale.retry_at = time.monotonic() + RETRY_SECONDS
            return
        except Exception as exc:
            log.error("refreshing API key %s failed: %s: %s", stale.principal.key_id, type(exc).__name__, exc)
            stale.retry_at = time.monotonic() + RETRY_SECONDS
            return
        if self.entries.get(digest) is stale:  # deleted, or a newer invalidation kept the answer out
            self._drop(digest)

    def _store(self, digest: str, entry: CachedKey) -> None:
        old = self.entries.pop(digest, None)
        if old is None:
            self._bounded(self.entries)
        self.entries[digest] = entry
        self.digest_of[entry.principal.key_id] = digest
        self.unknown.pop(digest, None)

    def _bounded(self, table: dict[str, Any]) -> None:
        while len(table) >= self.options.max_cached_keys:
            oldest = next(iter(table))
            if table is self.entries:
                self._drop(oldest)
            else:
                del table[oldest]

    def _drop(self, digest: str) -> None:
        entry = self.entries.pop(digest, None)
        if entry is not None and self.digest_of.get(entry.principal.key_id) == digest:
            del self.digest_of[entry.principal.key_id]

    def _warn_unavailable(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning(
                "API keys cannot be looked up (%s): cached keys keep working, unknown keys get 503", exc
            )

    def mark_stale(self) -> None:
        """Refresh every entry on its next use (in the background; it keeps being served meanwhile).

        Called when the events bus reconnects: revocations published during its outage were lost.
        """
        for entry in self.entries.values():
            entry.fresh_until = entry.retry_at = 0.0

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # invalidation

    def invalidate(self, message: Mapping[str, Any]) -> None:
        """Drop the keys a ``lockgate:keys`` message names; every key when it names none."""
        self.generation += 1
        key_id, user_id, org_id = message.get("key_id"), message.get("user_id"), message.get("org_id")
        if key_id is None and user_id is None and org_id is None:
            self.entries.clear()
            self.digest_of.clear()
            self.unknown.clear()
            return
        if key_id is not None:
            digest = self.digest_of.get(str(key_id))
            if digest is not None:
                self._drop(digest)
        if user_id is not None or org_id is not None:
            user, org = None if user_id is None else str(user_id), None if org_id is None else str(org_id)
            for digest, entry in list(self.entries.items()):
                principal = entry.principal
                if (user is not None and principal.user_id == user) or (
                    org is not None and (principal.org_id == org or _below(principal, org))
                ):
                    self._drop(digest)

    # last_used_at

    def start_flushing(self) -> None:
        self._flusher = asyncio.ensure_future(self._flush_every())

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.options.last_used_flush_seconds)
            await self.flush()

    async def flush(self) -> None:
        """Write the ``last_used_at`` of every key used since the last flush: one UPDATE per key.

        What cannot be written (database down, or any other failure, logged) is kept for the next flush.
        """
        if not self.used or not self.database.healthy:
            return
        batch, self.used = self.used, {}
        items = list(batch.items())
        for index, (key_id, used_at) in enumerate(items):
            moment = datetime.fromtimestamp(used_at, UTC)
            try:
                # Never move it backwards: another gateway may have written a later use.
                await self.database.run(
                    ApiKey.filter(
                        Q(id=key_id), Q(last_used_at__isnull=True) | Q(last_used_at__lt=moment)
                    ).update(last_used_at=moment)
                )
            except Exception as exc:
                if isinstance(exc, DatabaseUnavailable):
                    self._warn_unavailable(exc)
                else:
                    log.error("writing last_used_at failed: %s: %s", type(exc).__name__, exc)
                for unwritten_id, unwritten_at in items[index:]:
                    self.used[unwritten_id] = max(unwritten_at, self.used.get(unwritten_id, 0.0))
                return

    async def close(self) -> None:
        """Stop listening and background work, and write what is left."""
        if self.unsubscribe is not None:
            self.unsubscribe()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        try:
            await asyncio.wait_for(self.flush(), SHUTDOWN_FLUSH_SECONDS)
        except TimeoutError:
            log.warning("last_used_at not all written at shutdown: the database did not answer in time")
            return
        if self.used:
            log.warning("last_used_at of %d key(s) not written at shutdown: no database", len(self.used))


# --- hooks -------------------------------------------------------------------------------------------------


@hookimpl
async def lockgate_startup(gateway: Gateway) -> None:
    options = gateway.config.plugin_config(NAME, ApiKeysOptions)
    if gateway.database is None:
        log.info("no database configured: API keys come from the configuration only")
        gateway.plugin_state[NAME] = None
        return
    cache = ApiKeyCache(gateway.database, options)
    gateway.plugin_state[NAME] = cache
    cache.unsubscribe = gateway.events.subscribe(KEYS_CHANNEL, cache.invalidate)
    gateway.events.on_reconnect(cache.mark_stale)
    cache.start_flushing()


@hookimpl
async def lockgate_shutdown(gateway: Gateway) -> None:
    cache: ApiKeyCache | None = gateway.plugin_state.pop(NAME, None)
    if cache is not None:
        await cache.close()


@hookimpl(trylast=True)
def lockgate_authenticate(
    ctx: RequestContext, credential: str | None
) -> Principal | Awaitable[Principal | None] | None:
    cache: ApiKeyCache | None = ctx.gateway.plugin_state.get(NAME)
    if cache is None or not credential:
        return None
    return cache.authenticate(credential)
