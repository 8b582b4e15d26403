"""Request contexts as the pipeline leaves them, usage records with chosen values, and a bounded wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

from gateway_core.routing import Deployment, ModelGroup
from gateway_core.types import Principal, RequestContext, Usage
from gateway_core.usage.records import UsageEntry, new_event_id


async def until(predicate: Callable[[], bool], *, seconds: float = 15.0) -> None:
    """Wait until ``predicate()`` holds, checking every 20 ms, for ``seconds`` at most."""
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not hold in time")


def request_context(
    request_id: str = "req-1",
    *,
    model: str = "gpt-4o-mini",
    key_id: str | None = "key-1",
    user_id: str | None = "user-1",
    org_id: str | None = "org-1",
    provider: str | None = "openai",
    deployment_id: str = "openai-0",
    upstream_model: str = "gpt-4o-mini-2024-07-18",
    usage: Usage | None = None,
    cost: Decimal | None = Decimal("0.00012345"),
    price_known: bool = True,
    status: int = 200,
    error_type: str | None = None,
    latency_ms: float = 250.0,
    ttfb_ms: float | None = 40.0,
    attempts: int = 1,
    stream: bool = True,
    body: dict[str, Any] | None = None,
    dlp_findings: dict[tuple[str, str, str], int] | None = None,
) -> RequestContext:
    """A finished request as the pipeline leaves it (started ``latency_ms`` ago)."""
    now = time.perf_counter()
    ctx = RequestContext(
        cast(Any, None), request_id, "chat", "openai", {"authorization": "Bearer lg-secret-key"}
    )
    ctx.body = body or {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    ctx.model = model
    ctx.stream = stream
    if key_id is not None:
        ctx.principal = Principal(key_id=key_id, user_id=user_id, org_id=org_id)
    if provider is not None:
        deployment = Deployment(
            deployment_id, model, cast(Any, SimpleNamespace(name=provider)), upstream_model
        )
        ctx.deployment = deployment
        ctx.group = ModelGroup(model, (deployment,), cast(Any, None))
    ctx.usage = usage if usage is not None else Usage(12, 5, 17, 3, 1, 2)
    ctx.cost = cost
    ctx.price_known = price_known
    ctx.status = status
    ctx.error_type = error_type
    ctx.attempts = attempts
    ctx.started = now - latency_ms / 1000
    ctx.first_byte = ctx.started + ttfb_ms / 1000 if ttfb_ms is not None else None
    ctx.finished = now
    ctx.dlp_findings = dlp_findings
    return ctx


def usage_entry(
    created_at: datetime,
    *,
    model: str = "gpt-4o-mini",
    provider: str | None = "openai",
    key_id: str | None = "key-1",
    user_id: str | None = "user-1",
    org_id: str | None = "org-1",
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    cached_tokens: int = 0,
    cost: Decimal | None = Decimal("0.00010000"),
    price_known: bool = True,
    latency_ms: int = 100,
    status: int = 200,
    request_id: str | None = None,
    dlp_findings: str | None = None,
) -> UsageEntry:
    """A usage record with the values a test chooses."""
    event_id = new_event_id()
    return UsageEntry(
        event_id=event_id,
        request_id=request_id or f"req-{event_id[:12]}",
        created_at=created_at.astimezone(UTC),
        key_id=key_id,
        user_id=user_id,
        org_id=org_id,
        endpoint="chat",
        model=model,
        model_group=model,
        deployment_id=f"{provider}-0" if provider else None,
        provider=provider,
        upstream_model=model if provider else None,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=cached_tokens,
        cache_write_tokens=0,
        reasoning_tokens=0,
        total_tokens=prompt_tokens + completion_tokens,
        cost=cost if price_known else None,
        price_known=price_known,
        latency_ms=latency_ms,
        ttfb_ms=None,
        status=status,
        error_type=None if status < 400 else "upstream_error",
        attempts=1,
        stream=False,
        dialect="openai",
        dlp_findings=dlp_findings,
    )
