"""One log line per model request (``logging.access: true``): who called, what, and how it went.

The line is written when the request is recorded (``pipeline._finish``), on the logger
``lockgate.access`` at INFO, with its fields as ``extra={"fields": ...}``: JSON lines put them at the
top level of the object, text puts them after the message as ``name=value``. Values are the request's
identifiers and figures, never prompts, answers or keys.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway_core.types import RequestContext

log = logging.getLogger("lockgate.access")

_PATHS = {
    ("openai", "chat"): "/v1/chat/completions",
    ("openai", "embeddings"): "/v1/embeddings",
    ("anthropic", "chat"): "/v1/messages",
    ("anthropic", "count_tokens"): "/v1/messages/count_tokens",
}


def access_fields(ctx: RequestContext) -> dict[str, Any]:
    """The fields of ``ctx``'s access line (a finished request)."""
    principal = ctx.principal
    deployment = ctx.deployment
    usage = ctx.usage
    finished = ctx.finished if ctx.finished is not None else ctx.started
    fields: dict[str, Any] = {
        "request_id": ctx.request_id,
        "key": principal.name or principal.key_id if principal is not None else None,
        "org": principal.org_id if principal is not None else None,
        "model": ctx.model or None,
        "model_group": ctx.group.name if ctx.group is not None else None,
        "deployment": deployment.id if deployment is not None else None,
        "provider": deployment.provider.name if deployment is not None else None,
        "status": ctx.status,
        "stream": ctx.stream,
        "latency_ms": round((finished - ctx.started) * 1000, 1),
        "ttfb_ms": round((ctx.first_byte - ctx.started) * 1000, 1) if ctx.first_byte is not None else None,
        "attempts": ctx.attempts,
        "prompt_tokens": usage.prompt_tokens if usage is not None else None,
        "completion_tokens": usage.completion_tokens if usage is not None else None,
        "cost_usd": str(ctx.cost) if ctx.cost is not None and ctx.price_known else None,
        "error_type": ctx.error_type,
    }
    if ctx.dlp_findings:
        fields["dlp"] = ",".join(
            f"{entity}:{direction}:{action}={count}"
            for (entity, direction, action), count in sorted(ctx.dlp_findings.items())
        )
    return fields


def log_access(ctx: RequestContext) -> None:
    """Write ``ctx``'s access line."""
    path = _PATHS.get((ctx.dialect, ctx.endpoint), ctx.endpoint)
    log.info("POST %s %d", path, ctx.status, extra={"fields": access_fields(ctx)})
