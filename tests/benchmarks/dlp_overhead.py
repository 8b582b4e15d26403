"""What DLP adds to a request end to end: the same gateway with and without ``pii_patterns``.

Two Lockgate servers (one worker each) in front of the fast fake upstream, one configured with
``dlp: {filters: {pii_patterns: {}}, direction: both}``, take the same chat completion with about 4 KB
of prose holding a few values to redact, at concurrency 1, in alternating rounds. Reported: the p50
and p99 latency of each and the difference, and the time to the first byte of a streamed answer.
Only 127.0.0.1 is used; every run is bounded in requests and in seconds.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.benchmarks.fake_upstream import MODEL
from tests.benchmarks.loadgen import LoadResult, build_request, percentile, run_load
from tests.benchmarks.report import Samples
from tests.benchmarks.run import (
    API_KEY,
    HOST,
    PATH,
    Server,
    Target,
    free_port,
    lockgate_command,
    lockgate_config,
    start_server,
    wait_ready,
    write_config,
)

#: Ordinary prose, about 4 KB once repeated, with values every filter type of a busy chat would meet.
_PROSE = (
    "Thanks for the update on the quarterly planning. The team reviewed the roadmap on Tuesday and "
    "agreed to move the migration to the second half, after the release of version 4.2.1 on 2026-03-15. "
    "Order 88213-A shipped yesterday; the invoice INV-2026-0042 is attached for your records. "
)
_VALUES = (
    "Please reach Dana at dana.lee@example.com or +1 415 555 0132 about the renewal. "
    "The test card 4111 1111 1111 1111 must not be stored, nor the key AKIAIOSFODNN7EXAMPLE. "
)


def four_kb_text() -> str:
    text = _VALUES
    while len(text) < 4096:
        text += _PROSE
    return text[:4096]


def chat_request(port: int, *, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": four_kb_text()},
        ],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return build_request(HOST, port, PATH, orjson.dumps(body), headers)


@dataclass
class Side:
    label: str
    server: Server
    plain: LoadResult = field(default_factory=lambda: LoadResult(1))
    stream: LoadResult = field(default_factory=lambda: LoadResult(1))


@dataclass(frozen=True)
class Overhead:
    """Latencies in milliseconds at concurrency 1 (p50, p99) without and with DLP."""

    without_p50: float
    with_p50: float
    without_p99: float
    with_p99: float
    ttfb_without_p50: float
    ttfb_with_p50: float
    requests: int

    @property
    def added_p50(self) -> float:
        return self.with_p50 - self.without_p50

    @property
    def added_ttfb_p50(self) -> float:
        return self.ttfb_with_p50 - self.ttfb_without_p50

    def lines(self) -> list[str]:
        return [
            "| | without DLP | with `pii_patterns` | added |",
            "| --- | --- | --- | --- |",
            f"| p50, 4 KB request, concurrency 1 | {self.without_p50:.3f} ms | {self.with_p50:.3f} ms "
            f"| {self.added_p50:+.3f} ms |",
            f"| p99 | {self.without_p99:.3f} ms | {self.with_p99:.3f} ms "
            f"| {self.with_p99 - self.without_p99:+.3f} ms |",
            f"| stream: time to first byte, p50 | {self.ttfb_without_p50:.3f} ms "
            f"| {self.ttfb_with_p50:.3f} ms | {self.added_ttfb_p50:+.3f} ms |",
        ]


def dlp_config(port: int, upstream_port: int) -> dict[str, Any]:
    config = lockgate_config(port, upstream_port)
    config["dlp"] = {"filters": {"pii_patterns": {}}, "direction": "both"}
    return config


async def measure_overhead(*, rounds: int = 5, seconds: float = 2.0, max_requests: int = 20_000) -> Overhead:
    """Run the comparison; the fake upstream and both gateways live as long as the call."""
    with tempfile.TemporaryDirectory(prefix="lockgate-dlp-bench-") as folder:
        workdir = Path(folder)
        upstream_port = free_port()
        upstream = start_server(
            "upstream",
            [sys.executable, "-m", "tests.benchmarks.fake_upstream", "--port", str(upstream_port)],
            upstream_port,
            workdir,
            None,
        )
        sides: list[Side] = []
        try:
            for label, make in (("without", lockgate_config), ("with", dlp_config)):
                port = free_port()
                path = write_config(workdir, port, make(port, upstream_port))
                server = start_server(f"lockgate-{label}", lockgate_command(path), port, workdir, None)
                sides.append(Side(label, server))
            for side in sides:
                await wait_ready(Target(side.server, Samples(side.label)))
            for _ in range(rounds):
                for side in sides:
                    port = side.server.port
                    for stream, into in ((False, side.plain), (True, side.stream)):
                        result = await run_load(
                            HOST,
                            port,
                            chat_request(port, stream=stream),
                            concurrency=1,
                            max_requests=max_requests,
                            max_seconds=seconds,
                        )
                        if result.errors:
                            raise RuntimeError(f"{side.label} DLP: {result.errors} errors {result.statuses}")
                        into.merge(result)
        finally:
            for side in sides:
                side.server.stop()
            upstream.stop()
    without, with_dlp = sides
    millis = 1000.0
    return Overhead(
        without_p50=percentile(without.plain.latencies, 50) * millis,
        with_p50=percentile(with_dlp.plain.latencies, 50) * millis,
        without_p99=percentile(without.plain.latencies, 99) * millis,
        with_p99=percentile(with_dlp.plain.latencies, 99) * millis,
        ttfb_without_p50=percentile(without.stream.first_bytes, 50) * millis,
        ttfb_with_p50=percentile(with_dlp.stream.first_bytes, 50) * millis,
        requests=sum(len(s.plain.latencies) + len(s.stream.latencies) for s in sides),
    )


if __name__ == "__main__":
    print("\n".join(asyncio.run(measure_overhead()).lines()))
