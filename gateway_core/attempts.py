"""The calls made for one request: deployment choice, retries, fallbacks and the deadline.

:func:`serve` returns the answer of the first call that succeeded (a complete response, or a stream
whose first event has arrived and not yet been sent) or raises the error the client gets. It keeps
``ctx.deployment``/``ctx.group`` on the call in progress and ``ctx.attempts`` on the number of calls
made; it frees every failed call's deployment itself and leaves the successful one held
(``ctx.holding``) for the pipeline to free when the answer is over. The policy is described in
:mod:`gateway_core.resilience`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

from gateway_core.errors import GatewayError, upstream_error
from gateway_core.providers import ChatStream, CompletedResponse, ProviderCall, WrappedStream
from gateway_core.resilience import HEALTH_FAILURES, Failure, GroupPolicy, classify, retry_hint
from gateway_core.routing import Deployment, ModelGroup
from gateway_core.types import RequestContext

log = logging.getLogger("lockgate.attempts")

StreamMode = Literal["bytes", "chunks"]
Answer = CompletedResponse | ChatStream
#: Makes the call of one deployment (the pipeline knows the endpoint and the body).
CallMaker = Callable[[Deployment], ProviderCall]

_rng = random.Random()  # noqa: S311 - jitter, not secrets
#: Seconds waited past an upstream's retry hint before the deployment is called again.
HINT_MARGIN = 0.01


class PrimedStream(WrappedStream):
    """A stream whose first item was awaited before the answer started, so a stream that fails before
    sending anything can be retried elsewhere. Iterated the one way it was primed."""

    def __init__(
        self, inner: ChatStream, mode: StreamMode, first: Any, rest: AsyncIterator[Any] | None
    ) -> None:
        super().__init__(inner)
        self.mode = mode
        self._first = first
        self._rest = rest

    async def _replay(self) -> AsyncIterator[Any]:
        if self._rest is None:
            return
        yield self._first
        async for item in self._rest:
            yield item

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self.mode != "bytes":
            raise RuntimeError("this stream was primed as chunks")
        return self._replay()

    def chunks(self) -> AsyncIterator[dict[str, Any]]:
        if self.mode != "chunks":
            raise RuntimeError("this stream was primed as bytes")
        return self._replay()


async def prime(stream: ChatStream, mode: StreamMode) -> PrimedStream:
    """Wait for the first item of ``stream``; raise its error when it failed before sending any."""
    items: AsyncIterator[Any] = stream.__aiter__() if mode == "bytes" else stream.chunks().__aiter__()
    try:
        first = await items.__anext__()
    except StopAsyncIteration:
        if stream.error is not None:
            stream.close()
            raise stream.error from None
        return PrimedStream(stream, mode, None, None)
    except BaseException:
        stream.close()
        raise
    if stream.error is not None:  # the upstream failed (or sent an error event) before anything useful
        error = stream.error
        await _close_quietly(items)
        stream.close()
        raise error
    return PrimedStream(stream, mode, first, items)


async def _close_quietly(items: AsyncIterator[Any]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.debug("closing a failed stream raised", exc_info=True)


def release_attempt(ctx: RequestContext) -> None:
    """Free the deployment of the call in progress (in-flight count, balancer)."""
    deployment = ctx.deployment
    if deployment is None or not ctx.holding:
        return
    ctx.holding = False
    deployment.in_flight -= 1
    if ctx.group is not None:
        ctx.group.balancer.release(deployment, ctx)


def deadline_error(seconds: float) -> GatewayError:
    return upstream_error(
        f"The request did not complete within its deadline of {seconds:g} seconds.",
        status=504,
        code="deadline_exceeded",
    )


def no_deployment_error(ctx: RequestContext, group: ModelGroup, limited_for: float | None) -> GatewayError:
    """The error when no deployment of ``group`` may be called now: 429 with Retry-After when they are
    all rate limited (by this gateway's limits or an upstream's 429), else 503."""
    health = ctx.gateway.health
    rate_limited = limited_for is not None
    soonest = limited_for
    for deployment in group.deployments:
        out = health.out_for(deployment)
        if out is None:
            continue
        cooling, seconds = out
        rate_limited = rate_limited or cooling
        soonest = seconds if soonest is None else min(soonest, seconds)
    retry = {"Retry-After": str(max(1, math.ceil(soonest)))} if soonest is not None else {}
    if rate_limited:
        return GatewayError(
            429,
            f"Every deployment of the model `{group.name}` is rate limited or overloaded now; retry later.",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers=retry,
        )
    return upstream_error(
        f"No deployment of the model `{group.name}` is available now (all are failing or cooling down).",
        status=503,
        code="no_healthy_deployment",
        headers=retry,
    )


class Attempts:
    """Runs the calls of one request (built per request; cheap)."""

    __slots__ = (
        "ctx",
        "deadline_at",
        "deadline_seconds",
        "endpoint_call",
        "health",
        "make_call",
        "metrics",
        "stream_mode",
    )

    def __init__(
        self,
        ctx: RequestContext,
        make_call: CallMaker,
        endpoint_call: Callable[[Deployment, ProviderCall], Awaitable[Answer]],
        stream_mode: Callable[[ChatStream], StreamMode],
        policy: GroupPolicy,
    ) -> None:
        self.ctx = ctx
        self.make_call = make_call
        self.endpoint_call = endpoint_call
        self.stream_mode = stream_mode
        self.health = ctx.gateway.health
        metrics = ctx.gateway.metrics
        self.metrics = metrics if metrics.enabled else None
        self.deadline_seconds = policy.deadline
        self.deadline_at = ctx.started + policy.deadline if policy.deadline is not None else None

    def remaining(self) -> float | None:
        if self.deadline_at is None:
            return None
        return self.deadline_at - time.perf_counter()

    async def serve(self, group: ModelGroup, policy: GroupPolicy) -> Answer:
        """Call ``group``'s deployments, then its fallbacks; the first success wins.

        When every group failed, the client gets the first group's error (the model it asked for).
        """
        ctx = self.ctx
        gateway = ctx.gateway
        answer, first_error, failure = await self.try_group(group, policy)
        if answer is not None:
            return answer
        assert first_error is not None
        if failure is None:
            raise first_error
        context_mode = failure is Failure.CONTEXT_WINDOW
        pending = list(policy.context_window_fallbacks if context_mode else policy.fallbacks)
        tried = {group.name}
        principal = ctx.principal
        while pending:
            name = pending.pop(0)
            fallback = gateway.models.get(name)
            if fallback is None:
                log.warning("fallback model %r of %r does not exist; skipped", name, group.name)
                continue
            if fallback.name in tried:
                continue
            if principal is not None and not (principal.may_use(name) or principal.may_use(fallback.name)):
                continue
            remaining = self.remaining()
            if remaining is not None and remaining <= 0:
                break
            tried.add(fallback.name)
            answer, error, failure = await self.try_group(
                fallback, gateway.resilience.for_group(fallback.name)
            )
            if answer is not None:
                return answer
            log.info(
                "request %s: fallback %s failed: %s",
                ctx.request_id,
                fallback.name,
                error.code if error else "-",
            )
            if failure is Failure.CONTEXT_WINDOW and not context_mode:
                # Only the longer-context models can help now.
                context_mode = True
                pending = [n for n in policy.context_window_fallbacks if n not in tried]
        raise first_error

    def usable(
        self, group: ModelGroup, exclude: set[int] | None
    ) -> tuple[Sequence[Deployment], float | None]:
        """The deployments of ``group`` a call may go to now, and (when none) how long until one of
        the limited ones frees up."""
        deployments = group.deployments
        health = self.health
        now = time.monotonic()
        if not exclude and not health.any_unavailable:
            for deployment in deployments:
                if deployment.limited_until > now:
                    break
            else:
                return deployments, None
        usable: list[Deployment] = []
        soonest: float | None = None
        for deployment in deployments:
            if exclude and id(deployment) in exclude:
                continue
            if deployment.limited_until > now:
                wait = deployment.limited_until - now
                soonest = wait if soonest is None else min(soonest, wait)
                continue
            if not health.available(deployment):
                continue
            usable.append(deployment)
        if len(usable) == len(deployments):
            return deployments, None
        return tuple(usable), soonest

    async def try_group(
        self, group: ModelGroup, policy: GroupPolicy
    ) -> tuple[Answer | None, GatewayError | None, Failure | None]:
        """Call ``group``'s deployments under ``policy``: ``(answer, None, None)`` on success, else
        ``(None, error, failure kind or None when not worth another group)``."""
        ctx = self.ctx
        retry = policy.retry
        tried: set[int] = set()
        banned: set[int] = set()  # failed in a way the same deployment cannot fix (auth, own limits)
        calls = 0
        repeats = 0
        error: GatewayError | None = None
        failure: Failure | None = None
        hint: float | None = None
        while calls < retry.attempts:
            candidates, limited_for = self.usable(group, tried or None)  # banned ones are in tried
            if not candidates and tried:
                # Every usable deployment failed once: call one again after a back-off (and after the
                # upstream's Retry-After, during which a 429'd deployment cools down).
                repeats += 1
                wait = policy.backoff(repeats, _rng)
                if hint is not None:
                    if hint > retry.max_retry_after:
                        break
                    # The deployment's cooldown began when the hint came: a hair more and it is over.
                    wait = max(wait, hint + HINT_MARGIN)
                elif not self.usable(group, banned or None)[0]:
                    break  # nothing will be usable after a back-off (breakers open, limits hit)
                remaining = self.remaining()
                if remaining is not None and wait >= remaining:
                    break
                await asyncio.sleep(wait)
                candidates, limited_for = self.usable(group, banned or None)
            if not candidates:
                if error is None:
                    return None, no_deployment_error(ctx, group, limited_for), Failure.SERVER_ERROR
                break
            deployment = group.balancer.choose(ctx, candidates)
            calls += 1
            answer, error = await self.call(group, deployment)
            if answer is not None:
                return answer, None, None
            assert error is not None
            if error.code == "deadline_exceeded":
                return None, error, None
            failure = classify(error)
            if failure is None or not policy.retries(failure, error.upstream_status):
                return None, error, failure if failure is Failure.CONTEXT_WINDOW else None
            if failure in (Failure.AUTH, Failure.LIMITED):
                banned.add(id(deployment))
            tried.add(id(deployment))
            hint = retry_hint(error, failure)
        assert error is not None
        return None, error, failure

    async def call(
        self, group: ModelGroup, deployment: Deployment
    ) -> tuple[Answer | None, GatewayError | None]:
        """One call to ``deployment``; the answer, or the error with the deployment freed."""
        ctx = self.ctx
        ctx.group = group
        ctx.deployment = deployment
        ctx.attempts += 1
        deployment.in_flight += 1
        ctx.holding = True
        health = self.health
        health.begin(deployment)
        started = time.perf_counter()
        remaining = self.remaining()
        span = ctx.trace.attempt(ctx, deployment) if ctx.trace is not None else None
        try:
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                answer = await self.endpoint_call(deployment, self.make_call(deployment))
                if isinstance(answer, ChatStream):
                    answer = await prime(answer, self.stream_mode(answer))
        except TimeoutError:
            error = deadline_error(self.deadline_seconds or 0)
            release_attempt(ctx)
            if self.metrics is not None:
                self.metrics.attempt(group.name, deployment, "timeout", time.perf_counter() - started)
            if span is not None:
                span.end(error)
            return None, error
        except GatewayError as exc:
            if span is not None:
                span.end(exc)
            failure = classify(exc)
            if failure in HEALTH_FAILURES:
                health.failure(deployment, str(failure), retry_hint(exc, failure))
            if self.metrics is not None:
                outcome = "client_error" if failure is None else str(failure)
                self.metrics.attempt(group.name, deployment, outcome, time.perf_counter() - started)
            if failure is not None:
                log.info(
                    "request %s: deployment %s failed (%s, %s); attempt %d",
                    ctx.request_id,
                    deployment.id,
                    failure,
                    exc.upstream_status or exc.code,
                    ctx.attempts,
                )
            release_attempt(ctx)
            return None, exc
        except BaseException as exc:
            release_attempt(ctx)
            if span is not None:
                span.end(exc if isinstance(exc, Exception) else None)
            raise
        if span is not None:
            span.end()
        seconds = time.perf_counter() - started
        health.success(deployment, seconds)
        if self.metrics is not None:
            self.metrics.attempt(group.name, deployment, "success", seconds)
        return answer, None
