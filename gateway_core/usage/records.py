"""One usage record as the log handles it: built from a finished request, stored as a row or a JSON line.

A record holds who called, which model and deployment served, the token counts, the cost, the timing
and the outcome; never prompt or answer text. Strings are cut to their column's length and numbers
bounded to their column's range, so no record can fail its insert.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from gateway_core.types import RequestContext

INT_MAX = 2**31 - 1
SMALLINT_MAX = 2**15 - 1
#: The cost columns' precision (DECIMAL(18, 8)).
COST_QUANTUM = Decimal("0.00000001")
COST_MAX = Decimal("9999999999.99999999")
#: Longest ``dlp_findings`` text. Entity types are few, so a request rarely comes near it; the entries
#: beyond it are left out whole (the text stays a JSON list).
DLP_FINDINGS_MAX_CHARS = 2000
#: Longest entity type, direction or action kept in ``dlp_findings``.
_DLP_NAME_MAX = 100


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """The row of ``usage_records`` for one request (its ``id`` is given by the database)."""

    event_id: str
    request_id: str
    created_at: datetime
    key_id: str | None
    user_id: str | None
    org_id: str | None
    endpoint: str
    model: str
    model_group: str | None
    deployment_id: str | None
    provider: str | None
    upstream_model: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost: Decimal | None
    price_known: bool
    latency_ms: int
    ttfb_ms: int | None
    status: int
    error_type: str | None
    attempts: int
    stream: bool
    dialect: str
    #: The gateway estimated the token counts: a stream cut before the upstream reported them.
    tokens_estimated: bool = False
    #: What the DLP filters found, as compact JSON (see :func:`dlp_findings_json`); None when none ran.
    dlp_findings: str | None = None

    @property
    def is_error(self) -> bool:
        """An answer with an error status (the client leaving counts: 499)."""
        return self.status >= 400

    def values(self) -> tuple[Any, ...]:
        """The column values in the order of :data:`COLUMNS`."""
        return tuple(getattr(self, name) for name in COLUMNS)

    def to_json(self) -> bytes:
        """One line of the spool file (without the newline)."""
        data = {name: getattr(self, name) for name in COLUMNS}
        data["created_at"] = self.created_at.isoformat()
        data["cost"] = str(self.cost) if self.cost is not None else None
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, line: bytes) -> UsageEntry:
        """A record from a spool line; raises ``ValueError`` (or ``TypeError``/``KeyError``) when malformed."""
        data = orjson.loads(line)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        data["created_at"] = _utc(datetime.fromisoformat(data["created_at"]))
        data["cost"] = _cost(data["cost"]) if data.get("cost") is not None else None
        data.setdefault("tokens_estimated", False)  # spooled before the column existed
        data.setdefault("dlp_findings", None)  # likewise
        return cls(**{name: data[name] for name in COLUMNS})


#: The columns of ``usage_records`` the log writes, in a fixed order.
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(UsageEntry))

_LENGTHS = {
    "request_id": 128,
    "key_id": 200,
    "user_id": 200,
    "org_id": 200,
    "endpoint": 32,
    "model": 200,
    "model_group": 200,
    "deployment_id": 200,
    "provider": 100,
    "upstream_model": 200,
    "error_type": 100,
    "dialect": 16,
}


def new_event_id() -> str:
    """A random id that makes the record's insert idempotent (32 hex characters)."""
    return os.urandom(16).hex()


def entry_from_context(ctx: RequestContext) -> UsageEntry:
    """The usage record of a finished request (the prompt and the answer are left out)."""
    now_perf = time.perf_counter()
    finished = ctx.finished if ctx.finished is not None else now_perf
    started_wall = time.time() - (now_perf - ctx.started)
    principal = ctx.principal
    deployment = ctx.deployment
    usage = ctx.usage
    group = ctx.group
    prompt = completion = cached = cache_write = reasoning = total = 0
    if usage is not None:
        prompt, completion = _count(usage.prompt_tokens), _count(usage.completion_tokens)
        cached, cache_write = _count(usage.cached_tokens), _count(usage.cache_write_tokens)
        reasoning = _count(usage.reasoning_tokens)
        total = _count(usage.total_tokens or prompt + completion)
    return UsageEntry(
        event_id=new_event_id(),
        request_id=_text(ctx.request_id, "request_id") or "",
        created_at=datetime.fromtimestamp(started_wall, UTC),
        key_id=_text(principal.key_id, "key_id") if principal is not None else None,
        user_id=_text(principal.user_id, "user_id") if principal is not None else None,
        org_id=_text(principal.org_id, "org_id") if principal is not None else None,
        endpoint=_text(ctx.endpoint, "endpoint") or "",
        model=_text(ctx.model, "model") or "",
        model_group=_text(group.name, "model_group") if group is not None else None,
        deployment_id=_text(deployment.id, "deployment_id") if deployment is not None else None,
        provider=_text(deployment.provider.name, "provider") if deployment is not None else None,
        upstream_model=_text(deployment.upstream_model, "upstream_model") if deployment is not None else None,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        total_tokens=total,
        cost=_cost(ctx.cost) if ctx.cost is not None and ctx.price_known else None,
        price_known=bool(ctx.price_known),
        latency_ms=_millis(finished - ctx.started),
        ttfb_ms=_millis(ctx.first_byte - ctx.started) if ctx.first_byte is not None else None,
        status=min(max(int(ctx.status), 0), SMALLINT_MAX),
        error_type=_text(ctx.error_type, "error_type"),
        attempts=min(max(int(ctx.attempts), 0), SMALLINT_MAX),
        stream=bool(ctx.stream),
        dialect=_text(ctx.dialect, "dialect") or "",
        tokens_estimated=usage is not None and usage.estimated,
        dlp_findings=dlp_findings_json(ctx.dlp_findings),
    )


def dlp_findings_json(findings: Mapping[tuple[str, str, str], int] | None) -> str | None:
    """The ``dlp_findings`` column: the counts by (entity type, direction, action) as a compact JSON
    list sorted by type, direction and action, e.g.
    ``[{"type":"EMAIL_ADDRESS","direction":"request","action":"redact","count":2}]``;
    ``[]`` when the filters ran and found nothing, None when none ran. At most
    :data:`DLP_FINDINGS_MAX_CHARS` characters: the entries beyond are left out."""
    if findings is None:
        return None
    counts: dict[tuple[str, str, str], int] = {}
    for (entity_type, direction, action), count in findings.items():
        key = (_name(entity_type), _name(direction), _name(action))
        counts[key] = min(counts.get(key, 0) + _count(count), INT_MAX)
    parts: list[bytes] = []
    size = 2  # the brackets
    for (entity_type, direction, action), count in sorted(counts.items()):
        part = orjson.dumps({"type": entity_type, "direction": direction, "action": action, "count": count})
        size += len(part) + (1 if parts else 0)
        if size > DLP_FINDINGS_MAX_CHARS:
            break
        parts.append(part)
    return (b"[" + b",".join(parts) + b"]").decode()


def _name(value: object) -> str:
    return str(value).replace("\x00", "")[:_DLP_NAME_MAX]


def _text(value: object, column: str) -> str | None:
    if value is None:
        return None
    text = str(value).replace("\x00", "")  # PostgreSQL refuses NUL in text
    return text[: _LENGTHS[column]]


def _count(value: float) -> int:
    try:
        count = int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(count, 0), INT_MAX)


def _millis(seconds: float) -> int:
    return min(max(round(seconds * 1000), 0), INT_MAX)


def _cost(value: object) -> Decimal | None:
    """A cost as the columns store it (8 decimals, bounded); None when it is not a finite number."""
    try:
        cost = Decimal(str(value))
        if not cost.is_finite():
            return None
        return min(max(cost, -COST_MAX), COST_MAX).quantize(COST_QUANTUM)
    except (InvalidOperation, ValueError):
        return None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
