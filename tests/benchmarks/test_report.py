"""The benchmark's report: the full policy profile beside core Lockgate in every table, and the page
``make bench`` rewrites."""

from __future__ import annotations

import datetime
from decimal import Decimal
from pathlib import Path

from tests.benchmarks.full_policy import Evidence
from tests.benchmarks.loadgen import LoadResult
from tests.benchmarks.report import RESULTS_END, RESULTS_START, Plan, Report, Samples, write_doc

PLAN = Plan(rounds=3, warmup_seconds=1.0, c1_seconds=3.0, c16_seconds=5.0, stream_seconds=2.0)
FULL_LABEL = "Lockgate full policy"


def samples(label: str, latency_ms: float, rps: float, cpu_us: float, redis_us: float = 0.0) -> Samples:
    """Three rounds of one target whose latencies, requests/s and CPU per request are the given ones."""
    seconds = latency_ms / 1000
    measured = Samples(label)
    measured.c1 = LoadResult(1, elapsed=9.0, latencies=[seconds] * 300)
    measured.c16 = LoadResult(16, elapsed=15.0, latencies=[seconds * 10] * 3000)
    measured.stream = LoadResult(1, elapsed=6.0, latencies=[seconds] * 100, first_bytes=[seconds / 2] * 100)
    measured.rps = [rps] * 3
    measured.cpu = [cpu_us / 1e6] * 3
    measured.upstream_cpu = measured.loadgen_cpu = [20e-6] * 3
    measured.redis_cpu = [redis_us / 1e6] * 3 if redis_us else []
    if redis_us:
        measured.redis_trips_c1, measured.redis_trips_c16 = [1.02] * 3, [0.31] * 3
    measured.other_load = [0.02] * 3
    return measured


def report(*, full: bool) -> Report:
    rss = {"upstream": (25.0, 25.0), "bare": (45.0, 45.0), "lockgate": (73.0, 74.0)}
    made = Report(
        samples("direct", 0.1, 80_000, 10),
        samples("bare forwarder", 0.5, 2_500, 400),
        samples("Lockgate", 0.6, 2_400, 420),
        PLAN,
        True,
        rss,
        datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.UTC),
        180.0,
        commit="abc1234",
    )
    if full:
        made.full = samples(FULL_LABEL, 0.9, 1_200, 840, redis_us=60)
        rss["lockgate-full"] = (90.0, 91.0)
        evidence = Evidence(
            rate_headers={
                "x-ratelimit-limit-requests": "10000000",
                "x-ratelimit-remaining-requests": "9999999",
            },
            first_cost_nano_usd=7_200,
            answered=40_000,
            budget_nano_usd=280_000_000,
            records=40_000,
            priced=40_000,
            cost_usd=Decimal("0.28"),
        )
        made.full_evidence = evidence.lines()
    else:
        made.full_skipped = "Redis at redis://127.0.0.1:6379/0 is not reachable: nothing accepts connections"
    return made


def rows(markdown: str, heading: str) -> list[str]:
    """The table rows under ``### heading`` (header and separator left out)."""
    section = markdown.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")][2:]


def test_the_full_policy_profile_stands_beside_core_lockgate_in_every_table() -> None:
    markdown = report(full=True).markdown()

    latency = rows(markdown, "Latency and throughput (non-streamed chat completion)")
    assert [row.split(" | ")[0] for row in latency] == [
        "| direct",
        "| bare forwarder",
        "| Lockgate",
        f"| {FULL_LABEL}",
    ]
    assert latency[3] == f"| {FULL_LABEL} | 0.900 | 0.900 | 9.000 | 9.000 | 1,200 | 840 | 3,300 |"
    assert f"| **{FULL_LABEL} over Lockgate** | +0.300 | +0.300 | +3.000 | +3.000 |" in rows(
        markdown, "Overhead"
    )
    assert rows(markdown, "Streaming")[3] == f"| {FULL_LABEL} | 0.450 | 0.450 | 0.900 | 100 |"
    assert f"{FULL_LABEL}'s TTFB p50 minus Lockgate's: +0.150 ms." in markdown
    assert "| Lockgate full policy worker | 90.0 MB | 91.0 MB |" in rows(markdown, "Memory")
    # The goals stay those of core Lockgate.
    assert len(rows(markdown, "Goals")) == 3


def test_the_full_policy_section_gives_the_cost_of_the_policies_per_request_and_the_evidence() -> None:
    markdown = report(full=True).markdown()

    assert rows(markdown, "Full policy profile") == [
        "| Extra CPU time of the worker (concurrency 16) | +420 µs |",
        "| CPU time of the Redis server (concurrency 16) | 60 µs |",
        "| Redis round trips per request (concurrency 1 / 16) | 1.02 / 0.31 |",
        "| Extra p50 latency at concurrency 1 | +0.300 ms |",
        "| Requests/s at concurrency 16, full policy / core | 50% |",
    ]
    section = markdown.split("### Full policy profile\n", 1)[1].split("\n### ", 1)[0]
    assert "rate" in section and "budget" in section and "usage log" in section
    assert "`x-ratelimit-limit-requests: 10000000`" in section
    assert "40,000 records in the database for 40,000 answers (100.0%)" in section
    assert "settled to its real cost, $0.000007200" in section
    assert "budget in Redis held $0.280000000 for $0.280000000 of cost" in section


def test_a_skipped_full_policy_profile_says_why_and_leaves_the_other_figures() -> None:
    markdown = report(full=False).markdown()

    section = markdown.split("### Full policy profile\n", 1)[1].split("\n### ", 1)[0]
    assert section.strip() == (
        "Not measured in this run: Redis at redis://127.0.0.1:6379/0 is not reachable: "
        "nothing accepts connections."
    )
    assert FULL_LABEL not in markdown.split("### Full policy profile", 1)[1]
    assert len(rows(markdown, "Latency and throughput (non-streamed chat completion)")) == 3
    assert "| Lockgate worker | 73.0 MB | 74.0 MB |" in rows(markdown, "Memory")


def test_writing_the_results_keeps_the_hand_written_text_of_the_page(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\nHow we measure.\n\n{RESULTS_START}\n\nold figures\n\n{RESULTS_END}\n")

    write_doc(page, report(full=True).markdown())

    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nHow we measure.\n\n")
    assert "old figures" not in text
    assert f"| {FULL_LABEL} | 0.900 |" in text
    assert text.rstrip().endswith(RESULTS_END)
