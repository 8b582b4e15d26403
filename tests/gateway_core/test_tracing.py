"""Traces: a SERVER span per request, a CLIENT span per upstream attempt, the W3C context carried
from the client to the upstream; nothing at all when tracing is off."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer
from gateway_core.tracing import Tracing
from tests.fakes import FakeOpenAI
from tests.fakes.otlp_collector import FakeCollector

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"


def config(fake: FakeOpenAI, tracing: bool) -> dict[str, Any]:
    return {
        "tracing": {"enabled": tracing},
        "resilience": {"retry": {"attempts": 2, "backoff": 0}},
        "models": {
            "gpt-4o-mini": {
                "deployments": [{"provider": "openai", "base_url": fake.base_url, "api_key": fake.api_key}]
            }
        },
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    upstream.reset()
    yield upstream
    upstream.reset()


@pytest.fixture(scope="module")
def traced(upstream: FakeOpenAI) -> Iterator[tuple[GatewayServer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    server = GatewayServer(config(upstream, tracing=True))
    gateway = server.gateway
    gateway.tracing.shutdown()  # the configured OTLP exporter: replaced by one the test reads
    gateway.tracing = Tracing(gateway.config.tracing, exporter=exporter)
    with server:
        yield server, exporter


def spans(traced: tuple[GatewayServer, InMemorySpanExporter]) -> list[ReadableSpan]:
    server, exporter = traced
    server.gateway.tracing.provider.force_flush()
    found = list(exporter.get_finished_spans())
    exporter.clear()
    return found


def sdk(server: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=DEFAULT_TEST_KEY, max_retries=0)


def ask(server: GatewayServer, **headers: str) -> None:
    with openai.OpenAI(
        base_url=server.base_url, api_key=DEFAULT_TEST_KEY, max_retries=0, default_headers=headers
    ) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])


def test_a_request_has_a_server_span_and_its_attempt_a_client_child(
    traced: tuple[GatewayServer, InMemorySpanExporter], fake: FakeOpenAI
) -> None:
    spans(traced)
    ask(traced[0])
    server_span, attempt = sorted(spans(traced), key=lambda s: s.kind != SpanKind.SERVER)
    assert (server_span.kind, attempt.kind) == (SpanKind.SERVER, SpanKind.CLIENT)
    assert server_span.name == "chat gpt-4o-mini"
    attributes = dict(server_span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.usage.input_tokens"] > 0 and attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["http.response.status_code"] == 200
    assert attributes["lockgate.key"] == "test"
    assert attempt.parent is not None and attempt.parent.span_id == server_span.context.span_id
    assert dict(attempt.attributes or {})["server.address"] == "127.0.0.1"
    # The upstream was told which attempt called it.
    _version, trace_id, parent_id, flags = fake.requests[-1].headers["traceparent"].split("-")
    assert (trace_id, parent_id) == (f"{attempt.context.trace_id:032x}", f"{attempt.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled
    assert "hello" not in str(attributes)  # never the prompt


def test_the_client_s_trace_is_continued(
    traced: tuple[GatewayServer, InMemorySpanExporter], fake: FakeOpenAI
) -> None:
    spans(traced)
    ask(traced[0], traceparent=f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01")
    server_span = next(s for s in spans(traced) if s.kind == SpanKind.SERVER)
    assert f"{server_span.context.trace_id:032x}" == CLIENT_TRACE
    assert server_span.parent is not None and f"{server_span.parent.span_id:016x}" == CLIENT_PARENT
    assert fake.requests[-1].headers["traceparent"].split("-")[1] == CLIENT_TRACE


def test_retries_are_sibling_attempts_and_the_failed_one_says_why(
    traced: tuple[GatewayServer, InMemorySpanExporter], fake: FakeOpenAI
) -> None:
    spans(traced)
    fake.behave(status=500, faults_for=1)
    ask(traced[0])
    found = spans(traced)
    server_span = next(s for s in found if s.kind == SpanKind.SERVER)
    failed, served = sorted((s for s in found if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert failed.parent == served.parent and failed.parent is not None
    assert failed.parent.span_id == server_span.context.span_id
    assert failed.status.status_code == StatusCode.ERROR
    assert dict(failed.attributes or {})["http.response.status_code"] == 500
    assert served.status.status_code == StatusCode.UNSET
    assert dict(server_span.attributes or {})["lockgate.attempts"] == 2


def test_tracing_off_makes_no_span_and_sends_no_traceparent(fake: FakeOpenAI) -> None:
    with GatewayServer(config(fake, tracing=False)) as server:
        assert server.gateway.tracing is None
        ask(server)
    assert "traceparent" not in fake.requests[-1].headers


def test_spans_reach_a_collector_over_otlp_http() -> None:
    with FakeCollector() as collector:
        config = {
            "tracing": {"enabled": True, "endpoint": collector.endpoint, "service_name": "lockgate-test"},
            "models": {"mock-echo": {"deployments": [{"provider": "mock"}]}},
        }
        with GatewayServer(config) as server, sdk(server) as client:
            client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "hi"}])
        # Stopping the gateway exported what was left.
        names = sorted(span.name for span in collector.spans())
    assert names == ["chat mock-echo", "chat mock-echo"]  # the request and its attempt
