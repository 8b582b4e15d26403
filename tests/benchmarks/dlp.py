"""Accuracy and cost of the ``pii_patterns`` DLP filter on the labelled corpus.

Prints, per entity type, the true positives, false positives, false negatives, precision and recall
of ``find`` on :mod:`tests.plugins.dlp.corpus`, then the cost of ``find`` (all types on) over texts
of about 4 KB of prose holding a few corpus sentences.

    python -m tests.benchmarks.dlp                  # prints the tables (a few seconds)
    python -m tests.benchmarks.dlp --errors         # and every wrong answer
    python -m tests.benchmarks.dlp --end-to-end --write docs/dlp-accuracy.md   # `make bench-dlp` (~20 s)

:func:`measure` returns the figures as a :class:`Report`; ``--end-to-end`` adds what the filter costs
a request through a gateway (:mod:`tests.benchmarks.dlp_overhead`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway_core import DlpFilter, Finding
from plugins.dlp.pii_patterns import PiiPatterns, PiiPatternsOptions, numbers
from plugins.dlp.pii_patterns.entities import ALL_TYPES
from tests.plugins.dlp.corpus import NEGATIVES, OPTIONS, POSITIVES, Sample

ROOT = Path(__file__).resolve().parents[2]

PROSE = (
    "The quarterly review covered the migration plan for the billing service, the new onboarding flow "
    "and the hiring pipeline. Everyone agreed that the timeline was tight but achievable, provided the "
    "infrastructure team could finish the network changes by the end of the month. Note: the staging "
    "cluster will be unavailable on Friday while the database is upgraded, so please plan any testing "
    "around that window. We also discussed the feedback from the last survey, which asked for clearer "
    "release notes, faster answers from support and a simpler way to export reports. "
)
TEXT_SIZE = 4096


@dataclass
class TypeScore:
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 1.0


@dataclass
class Cost:
    """Microseconds per call of something measured, over ``samples`` calls."""

    label: str
    p50: float
    p99: float
    samples: int


@dataclass
class Report:
    scores: dict[str, TypeScore]
    costs: list[Cost] = field(default_factory=list)
    #: What each wrong answer was: (entity type, "FP" or "FN", the text).
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    #: The table of :mod:`tests.benchmarks.dlp_overhead`: a request through a gateway with and without
    #: the filter (empty unless asked for).
    end_to_end: list[str] = field(default_factory=list)


def build_filter() -> PiiPatterns:
    return PiiPatterns(PiiPatternsOptions.model_validate(OPTIONS))


def score(dlp: DlpFilter, samples: Sequence[Sample] = (*POSITIVES, *NEGATIVES)) -> Report:
    """Each sample's findings against its label. A finding that is not the labelled value is a false
    positive of its type, except one of the same type inside the value (an IPv4 in an IPv6 address)."""
    scores = {entity_type: TypeScore() for entity_type in sorted(ALL_TYPES)}
    report = Report(scores)
    for sample in samples:
        found = list(dlp.find(sample.text, ALL_TYPES))
        hit = False
        for finding in found:
            if sample.positive and _is(finding, sample):
                hit = True
            elif not (sample.positive and _inside(finding, sample)):
                scores[finding.entity_type].false_positives += 1
                report.errors.append((finding.entity_type, "FP", _show(sample.text, finding)))
        if sample.positive:
            if hit:
                scores[sample.entity_type].true_positives += 1
            else:
                scores[sample.entity_type].false_negatives += 1
                report.errors.append((sample.entity_type, "FN", f"{sample.value!r} in {sample.text!r}"))
    return report


def _is(finding: Finding, sample: Sample) -> bool:
    return (finding.entity_type, finding.start, finding.end) == (sample.entity_type, sample.start, sample.end)


def _inside(finding: Finding, sample: Sample) -> bool:
    return (
        finding.entity_type == sample.entity_type
        and sample.start <= finding.start < finding.end <= sample.end
    )


def _show(text: str, finding: Finding) -> str:
    return f"{text[finding.start : finding.end]!r} in {text!r}"


def benchmark_texts(count: int = 40, seed: int = 7) -> list[str]:
    """Texts of about 4 KB of prose with three corpus sentences (true values and look-alikes) in it."""
    chooser = random.Random(seed)
    samples = [*POSITIVES, *NEGATIVES]
    texts = []
    for _ in range(count):
        prose = (PROSE * (TEXT_SIZE // len(PROSE) + 2))[chooser.randrange(len(PROSE)) :]
        inserts = [chooser.choice(samples).text for _ in range(3)]
        budget = TEXT_SIZE - sum(len(insert) + 2 for insert in inserts)
        cuts = sorted(chooser.randrange(budget) for _ in range(3))
        pieces, last = [], 0
        for cut, insert in zip(cuts, inserts, strict=True):
            pieces += [prose[last:cut], " ", insert, " "]
            last = cut
        pieces.append(prose[last:budget])
        texts.append("".join(pieces))
    return texts


def time_calls(label: str, call: Callable[[str], object], texts: Sequence[str], rounds: int) -> Cost:
    """p50 and p99 of ``call`` on each text, ``rounds`` times each, in microseconds."""
    timings = []
    clock = time.perf_counter
    gc.disable()
    try:
        for _ in range(rounds):
            for text in texts:
                started = clock()
                call(text)
                timings.append((clock() - started) * 1e6)
    finally:
        gc.enable()
    quantiles = statistics.quantiles(timings, n=100)
    return Cost(label, quantiles[49], quantiles[98], len(timings))


def find_costs(dlp: PiiPatterns, texts: Sequence[str], rounds: int = 100) -> list[Cost]:
    """``find`` with every type on: with the phone-number cache emptied before each call (every
    number new), and with it warm (texts seen before, as the history of a conversation is)."""

    def cold(text: str) -> object:
        numbers.valid_phone.cache_clear()
        return dlp.find(text, ALL_TYPES)

    return [
        time_calls("find, 4 KB, all types (phone cache cold)", cold, texts, rounds),
        time_calls(
            "find, 4 KB, all types (phone cache warm)", lambda text: dlp.find(text, ALL_TYPES), texts, rounds
        ),
    ]


def measure(rounds: int = 200, *, end_to_end: bool = False) -> Report:
    """The corpus scores and the cost of ``find``; with ``end_to_end``, also what the filter adds to a
    request through a gateway (three servers in front of the fake upstream, about 30 s)."""
    dlp = build_filter()
    report = score(dlp)
    report.costs += find_costs(dlp, benchmark_texts(), rounds)
    if end_to_end:
        from tests.benchmarks.dlp_overhead import measure_overhead

        report.end_to_end = asyncio.run(measure_overhead(rounds=3, seconds=1.5)).lines()
    return report


def render(report: Report) -> str:
    total = TypeScore()
    lines = [
        "| Entity type | TP | FP | FN | Precision | Recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for entity_type, counts in report.scores.items():
        total.true_positives += counts.true_positives
        total.false_positives += counts.false_positives
        total.false_negatives += counts.false_negatives
        lines.append(
            f"| {entity_type} | {counts.true_positives} | {counts.false_positives} | {counts.false_negatives} "
            f"| {counts.precision:.3f} | {counts.recall:.3f} |"
        )
    lines.append(
        f"| **all** | {total.true_positives} | {total.false_positives} | {total.false_negatives} "
        f"| {total.precision:.3f} | {total.recall:.3f} |"
    )
    lines += ["", "| Cost | p50 (µs) | p99 (µs) | calls |", "|---|---:|---:|---:|"]
    lines += [f"| {cost.label} | {cost.p50:.1f} | {cost.p99:.1f} | {cost.samples} |" for cost in report.costs]
    if report.end_to_end:
        lines += ["", "Through a gateway (`tests/benchmarks/dlp_overhead.py`):", ""]
        lines += report.end_to_end
    lines += [
        "",
        f"Corpus: {len(POSITIVES)} true values, {len(NEGATIVES)} look-alikes; options `{OPTIONS}`. "
        f"Measured {datetime.date.today().isoformat()} with Python {platform.python_version()} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", type=Path, help="also write the results into this Markdown file")
    parser.add_argument("--rounds", type=int, default=200, help="timed calls per benchmark text")
    parser.add_argument("--errors", action="store_true", help="list the wrong answers")
    parser.add_argument(
        "--end-to-end", action="store_true", help="also measure a request through a gateway (about 15 s)"
    )
    args = parser.parse_args(argv)
    report = measure(args.rounds, end_to_end=args.end_to_end)
    table = render(report)
    print(table)
    if args.errors:
        for entity_type, kind, what in report.errors:
            print(f"{kind} {entity_type}: {what}")
    if args.write:
        write_doc(ROOT / args.write if not args.write.is_absolute() else args.write, table)


RESULTS_START = "<!-- DLP accuracy results: generated by `make bench-dlp`, do not edit below -->"
RESULTS_END = "<!-- end of DLP accuracy results -->"


def write_doc(path: Path, results: str) -> None:
    """Replace the results section of ``path``, keeping the hand-written text around it."""
    block = f"{RESULTS_START}\n\n{results}\n\n{RESULTS_END}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else "# DLP accuracy\n"
    start, end = text.find(RESULTS_START), text.find(RESULTS_END)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(RESULTS_END) :].lstrip("\n")
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
