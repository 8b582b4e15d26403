"""What DLP adds to a request end to end: the same gateway with and without ``pii_patterns``.

Three Lockgate servers (one worker each) in front of the fast fake upstream: without DLP, with
``dlp: {filters: {pii_patterns: {}}}`` (requests filtered, the default) and with ``direction: both``
(answers too). They take the same chat completion with about 4 KB of prose holding a few values to
redact, at concurrency 1, in alternating rounds. Reported: the p50 and p99 latency of each and the
time to the first byte of a streamed answer.
Only 127.0.0.1 is used; every run is bounded in requests and in seconds.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Callable
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

#: Ordinary prose (a status mail), about 4 KB once repeated, with a date and a version in it...
_PROSE = (
    "Thanks for the update on the quarterly planning. The team reviewed the roadmap on Tuesday and agreed "
    "to move the database migration to the second half, after the 4.2 release on 2026-03-15, so that the "
    "support engineers have time to rehearse the rollback. Everyone agreed that the timeline is tight but "
    "achievable, provided the infrastructure team finishes the network changes by the end of the month. "
    "The staging cluster will be unavailable on Friday while it is upgraded, so please plan any testing "
    "around that window, and send questions to the release channel rather than to individuals. "
)
#: ...and the values a busy chat meets: an e-mail address, a phone number, a card, a cloud key.
_VALUES = (
    "Please reach Dana at dana.lee@example.com or +1 415 555 0132 about the renewal. "
    "The test card 4111 1111 1111 1111 must not be stored, nor the key AKIAIOSFODNN7EXAMPLE. "
)


def four_kb_text(*, values: bool = True) -> str:
    """4 KB of the prose, starting with the values (the body is then rewritten) or without them."""
    text = _VALUES if values else ""
    while len(text) < 4096:
        text += _PROSE
    return text[:4096]


def chat_request(port: int, *, stream: bool, values: bool = True) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": four_kb_text(values=values)},
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
    #: The same request with nothing for the filter to find (scanned, forwarded as it came).
    clean: LoadResult = field(default_factory=lambda: LoadResult(1))


@dataclass(frozen=True)
class Figures:
    """Latencies in milliseconds at concurrency 1 of one gateway."""

    p50: float
    p99: float
    ttfb_p50: float
    clean_p50: float


@dataclass(frozen=True)
class Overhead:
    """The gateway without DLP, with ``pii_patterns`` on requests (the default policy), and on
    requests and answers (``direction: both``)."""

    without: Figures
    request: Figures
    both: Figures
    requests: int

    @property
    def added_p50(self) -> float:
        """What ``pii_patterns`` adds to a 4 KB request with the default policy."""
        return self.request.p50 - self.without.p50

    @property
    def added_clean_p50(self) -> float:
        """What scanning a 4 KB request that holds nothing to change adds."""
        return self.request.clean_p50 - self.without.clean_p50

    @property
    def added_ttfb_p50(self) -> float:
        """What filtering the answer too adds to a stream's first byte."""
        return self.both.ttfb_p50 - self.without.ttfb_p50

    def lines(self) -> list[str]:
        def row(name: str, value: Callable[[Figures], float]) -> str:
            base = value(self.without)
            cells = [f"{base:.3f} ms"]
            cells += [f"{value(f):.3f} ms ({value(f) - base:+.3f})" for f in (self.request, self.both)]
            return f"| {name} | " + " | ".join(cells) + " |"

        return [
            "| concurrency 1, 4 KB request | without DLP | `pii_patterns`, requests | `pii_patterns`, both directions |",
            "| --- | --- | --- | --- |",
            row("p50", lambda f: f.p50),
            row("p99", lambda f: f.p99),
            row("p50, nothing to find (the request is only scanned)", lambda f: f.clean_p50),
            row("stream: time to first byte, p50", lambda f: f.ttfb_p50),
        ]


def dlp_config(direction: str) -> Callable[[int, int], dict[str, Any]]:
    def make(port: int, upstream_port: int) -> dict[str, Any]:
        config = lockgate_config(port, upstream_port)
        config["dlp"] = {"filters": {"pii_patterns": {}}, "direction": direction}
        return config

    return make


async def measure_overhead(*, rounds: int = 5, seconds: float = 2.0, max_requests: int = 20_000) -> Overhead:
    """Run the comparison; the fake upstream and the gateways live as long as the call."""
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
        profiles: list[tuple[str, Callable[[int, int], dict[str, Any]]]] = [
            ("without", lockgate_config),
            ("request", dlp_config("request")),
            ("both", dlp_config("both")),
        ]
        try:
            for label, make in profiles:
                port = free_port()
                path = write_config(workdir, port, make(port, upstream_port))
                server = start_server(f"lockgate-{label}", lockgate_command(path), port, workdir, None)
                sides.append(Side(label, server))
            for side in sides:
                await wait_ready(Target(side.server, Samples(side.label)))
            for _ in range(rounds):
                for side in sides:
                    port = side.server.port
                    for stream, values, into in (
                        (False, True, side.plain),
                        (True, True, side.stream),
                        (False, False, side.clean),
                    ):
                        result = await run_load(
                            HOST,
                            port,
                            chat_request(port, stream=stream, values=values),
                            concurrency=1,
                            max_requests=max_requests,
                            max_seconds=seconds,
                        )
                        if result.errors:
                            raise RuntimeError(f"{side.label}: {result.errors} errors {result.statuses}")
                        into.merge(result)
        finally:
            for side in sides:
                side.server.stop()
            upstream.stop()

    def figures(side: Side) -> Figures:
        return Figures(
            p50=percentile(side.plain.latencies, 50) * 1000,
            p99=percentile(side.plain.latencies, 99) * 1000,
            ttfb_p50=percentile(side.stream.first_bytes, 50) * 1000,
            clean_p50=percentile(side.clean.latencies, 50) * 1000,
        )

    without, request, both = sides
    return Overhead(
        without=figures(without),
        request=figures(request),
        both=figures(both),
        requests=sum(
            len(s.plain.latencies) + len(s.stream.latencies) + len(s.clean.latencies) for s in sides
        ),
    )


if __name__ == "__main__":
    print("\n".join(asyncio.run(measure_overhead()).lines()))
