"""Traces with OpenTelemetry: a SERVER span per model request, a CLIENT span per upstream attempt.

Off unless ``tracing.enabled``: the request path then only checks ``ctx.trace is None``. On, each
request's span continues the client's W3C ``traceparent`` (when it sent one), each attempt's span is
its child (retries and fallbacks are siblings) and its context goes to the upstream as
``traceparent``, so a provider's own traces join the request's. Spans are exported in batches over
OTLP/HTTP, off the request path.

Attributes follow the OpenTelemetry GenAI semantic conventions (``gen_ai.operation.name``,
``gen_ai.provider.name``, ``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.*``,
``server.address``); Lockgate's own are under ``lockgate.``. Prompts and answers are never recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from gateway_core.config.services import TracingConfig
    from gateway_core.routing import Deployment
    from gateway_core.types import RequestContext

_OPERATIONS = {"chat": "chat", "embeddings": "embeddings", "count_tokens": "count_tokens"}
_PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    """The tracer of one gateway worker and its exporter."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        from gateway_core import __version__

        self.config = config
        resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
        self.provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio))
        )
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(
                endpoint=config.endpoint,
                headers={name: value.get_secret_value() for name, value in config.headers.items()},
                timeout=config.export_timeout,
            )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("lockgate", __version__)

    def request(self, ctx: RequestContext) -> RequestTrace:
        """Start the span of ``ctx``'s request, continuing the client's ``traceparent``."""
        parent = _PROPAGATOR.extract(ctx.headers)
        operation = _OPERATIONS.get(ctx.endpoint, ctx.endpoint)
        span = self.tracer.start_span(
            operation,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": operation,
                "lockgate.request_id": ctx.request_id,
                "lockgate.dialect": ctx.dialect,
            },
        )
        return RequestTrace(self, span, operation)

    def shutdown(self) -> None:
        """Export what is left and stop (at shutdown)."""
        self.provider.shutdown()


class RequestTrace:
    """The spans of one request."""

    __slots__ = ("operation", "span", "tracing")

    def __init__(self, tracing: Tracing, span: Span, operation: str) -> None:
        self.tracing = tracing
        self.span = span
        self.operation = operation

    def attempt(self, ctx: RequestContext, deployment: Deployment) -> AttemptTrace:
        """Start the span of one upstream call, made current so its context reaches the upstream."""
        span = self.tracing.tracer.start_span(
            f"{self.operation} {deployment.upstream_model}",
            context=set_span_in_context(self.span),
            kind=SpanKind.CLIENT,
            attributes=_attempt_attributes(self.operation, deployment, ctx.attempts),
        )
        token = otel_context.attach(set_span_in_context(span))
        return AttemptTrace(span, token)

    def finish(self, ctx: RequestContext) -> None:
        """End the request's span with what is known once the request is over."""
        span = self.span
        if ctx.model:
            span.update_name(f"{self.operation} {ctx.model}")
        span.set_attributes(_request_attributes(ctx))
        if ctx.status >= 500:
            span.set_status(Status(StatusCode.ERROR, ctx.error_type or str(ctx.status)))
        span.end()


class AttemptTrace:
    """The span of one upstream call."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: object) -> None:
        self.span = span
        self.token = token

    def end(self, error: Exception | None = None) -> None:
        otel_context.detach(self.token)  # type: ignore[arg-type]
        if error is not None:
            self.span.set_attribute("error.type", getattr(error, "code", None) or type(error).__name__)
            status = getattr(error, "upstream_status", None)
            if status is not None:
                self.span.set_attribute("http.response.status_code", status)
            self.span.set_status(Status(StatusCode.ERROR, getattr(error, "message", None) or str(error)))
        self.span.end()


def _attempt_attributes(operation: str, deployment: Deployment, attempt: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": deployment.provider.name,
        "gen_ai.request.model": deployment.upstream_model,
        "lockgate.deployment": deployment.id,
        "lockgate.attempt": attempt,
    }
    base_url = deployment.provider.deployment.base_url
    if base_url:
        parts = urlsplit(base_url)
        if parts.hostname:
            attributes["server.address"] = parts.hostname
            if parts.port:
                attributes["server.port"] = parts.port
    return attributes


def _request_attributes(ctx: RequestContext) -> dict[str, Any]:
    attributes: dict[str, Any] = {"http.response.status_code": ctx.status, "lockgate.attempts": ctx.attempts}
    if ctx.model:
        attributes["gen_ai.request.model"] = ctx.model
    if ctx.group is not None:
        attributes["lockgate.model_group"] = ctx.group.name
    deployment = ctx.deployment
    if deployment is not None:
        attributes["gen_ai.provider.name"] = deployment.provider.name
        attributes["gen_ai.response.model"] = deployment.upstream_model
        attributes["lockgate.deployment"] = deployment.id
    principal = ctx.principal
    if principal is not None:
        attributes["lockgate.key"] = principal.name or principal.key_id
        if principal.org_id is not None:
            attributes["lockgate.organization"] = principal.org_id
    usage = ctx.usage
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if ctx.cost is not None and ctx.price_known:
        attributes["lockgate.cost_usd"] = float(ctx.cost)
    if ctx.error_type is not None:
        attributes["error.type"] = ctx.error_type
    if ctx.stream:
        attributes["lockgate.stream"] = True
    if ctx.dlp_findings:
        attributes["lockgate.dlp.findings"] = sum(ctx.dlp_findings.values())
        attributes["lockgate.dlp.types"] = sorted({entity for entity, _, _ in ctx.dlp_findings})
    return attributes


def propagate(headers: Mapping[str, str]) -> MutableMapping[str, str]:
    """``headers`` with the current span's ``traceparent`` (and ``tracestate``) added."""
    carrier: dict[str, str] = dict(headers)
    _PROPAGATOR.inject(carrier)
    return carrier
