"""Prometheus metrics: the gateway's own, the ones plugins add, and ``GET /metrics``.

One server process keeps its metrics in a registry of its gateway. Several hypercorn workers use
prometheus-client's multiprocess mode: :func:`gateway_core.server.serve` gives every server start a
fresh folder in ``PROMETHEUS_MULTIPROC_DIR`` before the workers are spawned, each worker writes its
values to files of its own there, and ``GET /metrics``, whichever worker answers it, adds up the files
of every worker, those of workers that exited included (so a restarted worker loses no sample). A
worker marks itself dead when it stops, and the live gauges of a worker that was killed are dropped at
the next scrape; the server removes the folder when it exits.

Plugins add their own metrics through ``gateway.metrics`` (in ``lockgate_startup``, say)::

    errors = gateway.metrics.counter("myplugin_errors_total", "Errors of my plugin.", ["kind"])
    errors.labels("timeout").inc()

Request metrics are recorded once per finished request (:meth:`Metrics.record`). Their labels stay
few: ``owner`` is the key's name (or its organization, ``metrics.owner: organization``) and ``model``
the name of the model group that served the request, empty when no group was found, so a client
cannot make up series.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

if TYPE_CHECKING:
    from gateway_core.config import MetricsConfig
    from gateway_core.errors import GatewayError
    from gateway_core.routing import Deployment
    from gateway_core.types import RequestContext

#: The variable prometheus-client reads, at import, to write its values to files (multiprocess mode).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: ``Content-Type`` of the Prometheus text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds: model calls take from tens of milliseconds to minutes.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

GaugeMode = Literal["all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent"]

_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


def multiprocess_dir() -> str | None:
    """The folder of the multiprocess mode when prometheus-client runs in it in this process, else None."""
    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get(MULTIPROC_ENV)


def forget_dead_workers(path: str) -> None:
    """Drop the live gauges of workers that ended without marking themselves dead (killed)."""
    for pid in {int(m.group(1)) for name in os.listdir(path) if (m := _LIVE_FILE.fullmatch(name))}:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, someone else's


class _Series:
    """The label children of one (owner, model): looked up once, then incremented directly."""

    __slots__ = (
        "cached",
        "completion",
        "cost",
        "duration",
        "first_token",
        "prompt",
        "reasoning",
        "requests",
    )

    def __init__(self, metrics: Metrics, owner: str, model: str) -> None:
        self.requests: dict[int, Counter] = {}
        self.duration = metrics.request_duration.labels(owner, model)
        self.first_token = metrics.first_token.labels(owner, model)
        self.cost = metrics.cost.labels(owner, model)
        tokens = metrics.tokens
        self.prompt = tokens.labels(owner, model, "prompt")
        self.completion = tokens.labels(owner, model, "completion")
        self.cached = tokens.labels(owner, model, "cached")
        self.reasoning = tokens.labels(owner, model, "reasoning")


class Metrics:
    """The metrics of one gateway (one worker), and what ``GET /metrics`` answers."""

    def __init__(self, config: MetricsConfig) -> None:
        self.config = config
        self.enabled = config.enabled
        self._by_organization = config.owner == "organization"
        #: Where the workers' values are added up (None: this process's registry is the whole story).
        self.multiprocess_dir = multiprocess_dir()
        #: The metrics of this gateway (in multiprocess mode, it only keeps names unique).
        self.registry = CollectorRegistry()
        self.requests = self.counter(
            "gateway_requests_total",
            "Requests to the model endpoints, by status code of the answer (499: the client left).",
            ["owner", "model", "status_code"],
        )
        self.request_duration = self.histogram(
            "gateway_request_duration_seconds",
            "Time from a request's arrival to its answer's end (a stream's last event).",
            ["owner", "model"],
            buckets=DURATION_BUCKETS,
        )
        self.tokens = self.counter(
            "gateway_tokens_used_total",
            "Tokens used by requests: prompt, completion, cached (prompt tokens read from the "
            "provider's cache) and reasoning (completion tokens spent thinking).",
            ["owner", "model", "token_type"],
        )
        self.first_token = self.histogram(
            "gateway_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first event sent to the client.",
            ["owner", "model"],
            buckets=FIRST_TOKEN_BUCKETS,
        )
        self.cost = self.counter(
            "gateway_cost_usd_total",
            "Cost of the requests in US dollars, from the price table (unknown prices count nothing).",
            ["owner", "model"],
        )
        self.in_flight = self.gauge(
            "gateway_requests_in_flight", "Requests to the model endpoints being handled now."
        )
        self.dlp_findings = self.counter(
            "gateway_dlp_findings_total",
            "What the DLP filters found, by entity type, direction (request or response) and action.",
            ["owner", "model", "entity_type", "direction", "action"],
        )
        self.errors = self.counter(
            "gateway_request_errors_total",
            "Requests answered with an error, by its code (rate_limit_exceeded, model_not_found, "
            "invalid_api_key, ...; upstream_error for an error the upstream answered).",
            ["owner", "model", "code"],
        )
        self.upstream_requests = self.counter(
            "gateway_upstream_requests_total",
            "Calls to upstream deployments (retries and fallbacks included), by outcome: success, "
            "a failure kind or client_error.",
            ["model", "deployment", "provider", "outcome"],
        )
        self.upstream_duration = self.histogram(
            "gateway_upstream_duration_seconds",
            "Time of a call to an upstream deployment until its answer (a stream's first event).",
            ["model", "deployment", "provider"],
            buckets=DURATION_BUCKETS,
        )
        self._series: dict[tuple[str, str], _Series] = {}
        self._upstreams: dict[tuple[str, str], tuple[Histogram, dict[str, Counter]]] = {}

    # --- for plugins ----------------------------------------------------------------------------------

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A counter in this gateway's registry (added up over the workers)."""
        return Counter(name, documentation, labels, registry=self.registry)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
    ) -> Histogram:
        """A histogram in this gateway's registry (added up over the workers)."""
        return Histogram(name, documentation, labels, registry=self.registry, buckets=buckets)

    def gauge(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        multiprocess_mode: GaugeMode = "livesum",
    ) -> Gauge:
        """A gauge in this gateway's registry. With several workers, ``multiprocess_mode`` says how
        their values combine: ``livesum`` (the default) adds those of the running workers; ``liveall``
        keeps one series per worker (label ``pid``); ``max``, ``min``, ``mostrecent``, ..."""
        return Gauge(name, documentation, labels, registry=self.registry, multiprocess_mode=multiprocess_mode)

    # --- per request ----------------------------------------------------------------------------------

    def record(self, ctx: RequestContext, error: GatewayError | None = None) -> None:
        """Count a finished request and the error it was answered with (called once, by the
        pipeline's ``_finish``)."""
        principal = ctx.principal
        owner = ""
        if principal is not None:
            owner = (principal.org_id or "") if self._by_organization else principal.name
        group = ctx.group
        model = group.name if group is not None else ""
        series = self._series.get((owner, model))
        if series is None:
            series = self._series[owner, model] = _Series(self, owner, model)
        status = ctx.status
        requests = series.requests.get(status)
        if requests is None:
            requests = series.requests[status] = self.requests.labels(owner, model, str(status))
        requests.inc()
        finished = ctx.finished
        if finished is not None:
            series.duration.observe(finished - ctx.started)
        if ctx.stream and ctx.first_byte is not None:
            series.first_token.observe(ctx.first_byte - ctx.started)
        usage = ctx.usage
        if usage is not None:
            if usage.prompt_tokens:
                series.prompt.inc(usage.prompt_tokens)
            if usage.completion_tokens:
                series.completion.inc(usage.completion_tokens)
            if usage.cached_tokens:
                series.cached.inc(usage.cached_tokens)
            if usage.reasoning_tokens:
                series.reasoning.inc(usage.reasoning_tokens)
        if ctx.cost:
            series.cost.inc(float(ctx.cost))
        if error is not None:
            code = "upstream_error" if error.upstream_status is not None else error.code or ""
            self.errors.labels(owner, model, code).inc()
        findings = ctx.dlp_findings
        if findings:
            for (entity_type, direction, action), count in findings.items():
                self.dlp_findings.labels(owner, model, entity_type, direction, action).inc(count)

    def attempt(self, model: str, deployment: Deployment, outcome: str, seconds: float) -> None:
        """Count one call to an upstream deployment of the group ``model`` (called by the attempts)."""
        upstream = self._upstreams.get((model, deployment.id))
        if upstream is None:
            labels = (model, deployment.id, deployment.provider.name)
            upstream = self._upstreams[model, deployment.id] = (self.upstream_duration.labels(*labels), {})
        duration, outcomes = upstream
        duration.observe(seconds)
        counter = outcomes.get(outcome)
        if counter is None:
            counter = outcomes[outcome] = self.upstream_requests.labels(
                model, deployment.id, deployment.provider.name, outcome
            )
        counter.inc()

    # --- GET /metrics ---------------------------------------------------------------------------------

    def authorized(self, authorization: str | None) -> bool:
        """Whether a scrape with this ``Authorization`` header may read the metrics."""
        config = self.config
        if config.auth == "none":
            return True
        token = config.token
        if authorization is None or token is None:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), token.get_secret_value().encode()
        )

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format, added up over the workers (reads files in
        multiprocess mode: call it off the event loop)."""
        path = self.multiprocess_dir
        if path is None:
            return generate_latest(self.registry)
        forget_dead_workers(path)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def stop(self) -> None:
        """The worker is stopping: its live gauges (requests in flight) no longer count."""
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]
