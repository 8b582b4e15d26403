"""What a finished request consumed, as policies settle it (shared so every policy agrees)."""

from __future__ import annotations

from gateway_core.types import RequestContext

#: The status the pipeline records when the client went away.
CLIENT_CLOSED = 499


def reached_provider(ctx: RequestContext) -> bool:
    """Whether an upstream call was made (a request refused by a later policy never got that far)."""
    return ctx.deployment is not None or ctx.attempts > 0


def unmeasured_keeps_reservation(ctx: RequestContext) -> bool:
    """For a request that reached a provider but whose usage is unknown: whether to keep what was
    reserved for it.

    A success without usage, or a client that left mid-call, may have consumed up to the whole
    reservation, so it is kept (limits never undercount). An upstream failure consumed nothing.
    """
    return ctx.status < 400 or ctx.status == CLIENT_CLOSED


def tokens_used(ctx: RequestContext, reserved: int) -> int:
    """The tokens to count for a finished request that reserved ``reserved`` tokens."""
    if ctx.usage is not None:
        return ctx.usage.total_tokens or ctx.usage.prompt_tokens + ctx.usage.completion_tokens
    if reached_provider(ctx) and unmeasured_keeps_reservation(ctx):
        return reserved
    return 0
