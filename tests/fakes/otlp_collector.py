"""A fake OpenTelemetry collector: takes OTLP/HTTP trace exports (protobuf) as a collector does."""

from __future__ import annotations

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.fakes.server import BackgroundServer, RecordedRequest

PATH = "/v1/traces"


class FakeCollector(BackgroundServer[RecordedRequest]):
    name = "fake-otlp-collector"
    record_type = RecordedRequest

    @property
    def endpoint(self) -> str:
        return f"{self.url}{PATH}"

    def routes(self, app: web.Application) -> None:
        app.router.add_post(PATH, self._traces)

    async def _traces(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415)
        try:
            ExportTraceServiceRequest.FromString(recorded.body)
        except Exception:
            return web.Response(status=400)
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def spans(self) -> list[Span]:
        """Every span received so far."""
        found: list[Span] = []
        for recorded in self.requests_to(PATH):
            export = ExportTraceServiceRequest.FromString(recorded.body)
            for resource in export.resource_spans:
                for scope in resource.scope_spans:
                    found.extend(scope.spans)
        return found
