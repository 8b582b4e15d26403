"""The ``pii_patterns`` DLP filter: its accuracy on the labelled corpus, stream hold-back, options
and registration."""

from __future__ import annotations

import functools
import itertools
import json
import random
import time
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway_core import DlpFilter, Finding, Gateway, parse_config
from plugins.dlp.pii_patterns import PiiPatterns, PiiPatternsOptions
from plugins.dlp.pii_patterns.entities import (
    ALL_TYPES,
    CREDIT_CARD,
    EMAIL_ADDRESS,
    GENERIC_SECRET,
    IBAN_CODE,
    IP_ADDRESS,
    OPENAI_API_KEY,
    PHONE_NUMBER,
    PRIVATE_KEY,
    US_SSN,
)
from tests.benchmarks.dlp import Report, benchmark_texts, build_filter, score
from tests.plugins.dlp.corpus import NEGATIVES, POSITIVES, Sample

MIN_RECALL = 0.99
MIN_PRECISION = 0.98


@functools.cache
def corpus_report() -> Report:
    return score(build_filter())


def spans(dlp: DlpFilter, text: str, types: frozenset[str] = ALL_TYPES) -> list[tuple[str, str]]:
    return sorted(
        (finding.entity_type, text[finding.start : finding.end]) for finding in dlp.find(text, types)
    )


# --- accuracy on the corpus -----------------------------------------------------------------------


def test_the_corpus_is_large_and_covers_every_type() -> None:
    assert len(POSITIVES) >= 300
    assert len(NEGATIVES) >= 300
    for entity_type in ALL_TYPES:
        assert sum(sample.entity_type == entity_type for sample in POSITIVES) >= 20, entity_type
    for sample in (*POSITIVES, *NEGATIVES):
        assert sample.text.count(sample.value) >= 1


@pytest.mark.parametrize("entity_type", sorted(ALL_TYPES))
def test_precision_and_recall_per_type(entity_type: str) -> None:
    report = corpus_report()
    counts = report.scores[entity_type]
    wrong = [error for error in report.errors if error[0] == entity_type]
    assert counts.recall >= MIN_RECALL, wrong
    assert counts.precision >= MIN_PRECISION, wrong


def test_finds_only_the_types_asked_for() -> None:
    dlp = build_filter()
    text = "Mail bob@example.org, card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32."
    assert spans(dlp, text, frozenset({EMAIL_ADDRESS})) == [(EMAIL_ADDRESS, "bob@example.org")]
    assert spans(dlp, text, frozenset({IBAN_CODE, CREDIT_CARD})) == [
        (CREDIT_CARD, "4111 1111 1111 1111"),
        (IBAN_CODE, "GB82 WEST 1234 5698 7654 32"),
    ]
    assert spans(dlp, text, frozenset()) == []


def test_a_value_is_reported_as_one_type() -> None:
    dlp = build_filter()
    # A card number is not also a phone number; a vendor key is not also a generic secret.
    assert spans(dlp, "card: 4111111111111111") == [(CREDIT_CARD, "4111111111111111")]
    key = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyZ0aB"
    assert spans(dlp, f'api_key = "{key}"') == [(OPENAI_API_KEY, key)]
    # ... unless only the generic type is asked for.
    assert spans(dlp, f'api_key = "{key}"', frozenset({GENERIC_SECRET})) == [(GENERIC_SECRET, key)]


def test_bare_nine_digits_are_a_social_security_number_only_after_the_words() -> None:
    dlp = build_filter()
    assert spans(dlp, "SSN: 219456789") == [(US_SSN, "219456789")]
    assert spans(dlp, "Reference 219456789") == []
    assert spans(dlp, "Her social security number is 219 45 6789.") == [(US_SSN, "219 45 6789")]


def test_a_dotted_quad_after_the_word_version_is_not_an_address() -> None:
    dlp = build_filter()
    assert spans(dlp, "version 1.2.3.4") == []
    assert spans(dlp, "host 1.2.3.4") == [(IP_ADDRESS, "1.2.3.4")]


def test_a_json_escaped_private_key_in_tool_call_arguments() -> None:
    dlp = build_filter()
    body = "\\n".join(["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7" + "a" * 12] * 3)
    key = f"-----BEGIN PRIVATE KEY-----\\n{body}\\n-----END PRIVATE KEY-----"
    arguments = '{"path": "key.pem", "content": "' + key + '\\n"}'
    assert spans(dlp, arguments) == [(PRIVATE_KEY, key)]


def test_every_true_value_is_found_in_a_json_escaped_text() -> None:
    """Texts may be fragments of JSON (streamed tool-call arguments): line breaks are ``\\n``."""
    dlp = build_filter()
    missed = []
    for sample in POSITIVES:
        text = json.dumps("\n" + sample.text + "\n")[1:-1]
        value = json.dumps(sample.value)[1:-1]
        start = text.index(value)
        if (sample.entity_type, start, start + len(value)) not in {
            _at(f, 0) for f in dlp.find(text, ALL_TYPES)
        }:
            missed.append(text)
    assert missed == []


def test_a_private_key_cut_short_is_reported_to_the_end_of_its_material() -> None:
    dlp = build_filter()
    text = (
        "-----BEGIN RSA PRIVATE KEY-----\n"
        + "\n".join(["QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkw"] * 3)
        + "\n"
    )
    assert spans(dlp, text) == [(PRIVATE_KEY, text.rstrip("\n"))]


def test_national_formats_follow_the_phone_regions() -> None:
    us_only = PiiPatterns(PiiPatternsOptions())
    british = PiiPatterns(PiiPatternsOptions(phone_regions=["gb"]))
    international = PiiPatterns(PiiPatternsOptions(phone_regions=[]))
    text = "Call 020 7946 0958, (415) 555-0132 or +1-415-555-0132."
    assert spans(us_only, text) == [(PHONE_NUMBER, "(415) 555-0132"), (PHONE_NUMBER, "+1-415-555-0132")]
    assert spans(british, text) == [(PHONE_NUMBER, "+1-415-555-0132"), (PHONE_NUMBER, "020 7946 0958")]
    assert spans(international, text) == [(PHONE_NUMBER, "+1-415-555-0132")]


# --- stream hold-back -----------------------------------------------------------------------------


def stream(dlp: DlpFilter, pieces: Sequence[str], types: frozenset[str]) -> set[tuple[str, int, int]]:
    """Findings of a streamed text, as the core gets them: each piece is appended to what is held,
    ``text[:holdback]`` is released (never in the middle of a finding) and the rest held; at the end
    what is held is flushed."""
    found: set[tuple[str, int, int]] = set()
    released, held = 0, ""
    for piece in pieces:
        buffer = held + piece
        findings = list(dlp.find(buffer, types))
        cut = dlp.holdback(buffer, types)
        assert 0 <= cut <= len(buffer)
        while crossing := [finding.start for finding in findings if finding.start < cut < finding.end]:
            cut = min(crossing)
        found |= {_at(finding, released) for finding in findings if finding.end <= cut}
        released, held = released + cut, buffer[cut:]
    found |= {_at(finding, released) for finding in dlp.find(held, types)}
    return found


def _at(finding: Finding, offset: int) -> tuple[str, int, int]:
    return finding.entity_type, finding.start + offset, finding.end + offset


def split(text: str, cuts: Sequence[int]) -> list[str]:
    points = [0, *sorted({cut % (len(text) + 1) for cut in cuts}), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(points)]


def assert_streamed_like_whole(dlp: DlpFilter, sample: Sample, cuts: Sequence[int]) -> None:
    expected = (sample.entity_type, sample.start, sample.end)
    assert expected in {_at(finding, 0) for finding in dlp.find(sample.text, ALL_TYPES)}
    pieces = split(sample.text, cuts)
    for types in (ALL_TYPES, frozenset({sample.entity_type})):
        assert expected in stream(dlp, pieces, types), (pieces, sorted(types))


def test_every_true_value_is_found_when_streamed_in_pieces() -> None:
    dlp = build_filter()
    chooser = random.Random(1208)
    for sample in POSITIVES:
        size = len(sample.text)
        cuts_per_try = [
            [chooser.randrange(size + 1) for _ in range(3)],
            list(range(0, size, chooser.randint(1, 5))),  # small chunks, like a model's tokens
            [sample.start + chooser.randrange(len(sample.value) + 1)],  # inside the value
        ]
        for cuts in cuts_per_try:
            assert_streamed_like_whole(dlp, sample, cuts)


def test_look_alikes_streamed_in_tokens_are_still_nothing() -> None:
    dlp = build_filter()
    chooser = random.Random(1209)
    for sample in NEGATIVES:
        cuts = list(itertools.accumulate(chooser.randint(1, 4) for _ in range(len(sample.text))))
        assert stream(dlp, split(sample.text, cuts), ALL_TYPES) == set(), sample.text


def test_long_texts_streamed_in_tokens_lose_no_finding() -> None:
    dlp = build_filter()
    chooser = random.Random(812)
    checked = 0
    for text in benchmark_texts(count=20, seed=3):
        cuts = list(itertools.accumulate(chooser.randint(1, 8) for _ in range(len(text))))
        whole = {_at(finding, 0) for finding in dlp.find(text, ALL_TYPES)}
        assert whole <= stream(dlp, split(text, [cut for cut in cuts if cut < len(text)]), ALL_TYPES)
        checked += len(whole)
    assert checked >= 10


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(POSITIVES),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_streaming_finds_what_a_whole_scan_finds(sample: Sample, cuts: list[int]) -> None:
    assert_streamed_like_whole(build_filter(), sample, cuts)


@pytest.mark.parametrize(
    ("text", "types", "held"),
    [
        ("Nothing to see here. ", ALL_TYPES, ""),
        ("Mail me at alice@exa", frozenset({EMAIL_ADDRESS}), "alice@exa"),
        ("Dial +1 415 55", frozenset({PHONE_NUMBER}), "Dial +1 415 55"),  # bare digits would need "dial"
        ("Write to +1 415 55", frozenset({PHONE_NUMBER}), "+1 415 55"),
        ("Pay to DE89 3704 0044 ", frozenset({IBAN_CODE}), "DE89 3704 0044 "),
        ("IBAN DE89 3704 ", frozenset({IBAN_CODE}), "IBAN DE89 3704 "),  # capitals may start one
        ("card 4111 1111 1111 1111 is", frozenset({CREDIT_CARD}), "is"),
        ("Her SSN is ", frozenset({US_SSN}), "SSN is "),
        ('config: {"password": "hunt', frozenset({GENERIC_SECRET}), 'password": "hunt'),
        ("DB_PASSWORD ", frozenset({GENERIC_SECRET}), "PASSWORD "),  # the key's last word is enough
        ("Authorization: Bearer ", frozenset({GENERIC_SECRET}), "Authorization: Bearer "),
        (
            "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIE",
            frozenset({PRIVATE_KEY}),
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE",
        ),
        ("-----BEGIN PUBLIC KEY-----\nMIIB", frozenset({PRIVATE_KEY}), "MIIB"),
    ],
)
def test_holds_back_what_could_still_become_a_value(text: str, types: frozenset[str], held: str) -> None:
    dlp = build_filter()
    assert text[dlp.holdback(text, types) :] == held


def test_holds_back_a_bounded_tail_of_a_long_number() -> None:
    dlp = build_filter()
    text = "ids " + " ".join(["1234"] * 40)
    assert len(text) - dlp.holdback(text, frozenset({PHONE_NUMBER})) <= 48


@pytest.mark.parametrize(
    "unit",
    ["1 ", "1.", "-", ":", "=", "a=", "password=", "a:", "@", "(1)", "+1 ", "AB12 ", "sk-", "eyJ", "AKIA",
     "-----BEGIN PRIVATE KEY-----", "\\n", "Ab1"],
)  # fmt: skip
def test_cost_grows_linearly_on_hostile_texts(unit: str) -> None:
    """100 KB of one repeated piece takes no longer than a few times 100 KB of prose (no regular
    expression or loop that is quadratic in a run's length)."""
    dlp = build_filter()
    text = (unit * (100_000 // len(unit) + 1))[:100_000]
    started = time.perf_counter()
    dlp.find(text, ALL_TYPES)
    dlp.holdback(text[-4096:], ALL_TYPES)
    assert time.perf_counter() - started < 2.0


# --- options and registration ---------------------------------------------------------------------


def test_options_are_validated() -> None:
    assert PiiPatternsOptions().phone_regions == ["US"]
    assert PiiPatternsOptions(phone_regions=["gb", "De"]).phone_regions == ["GB", "DE"]
    with pytest.raises(ValidationError, match="unknown phone regions: ZZ"):
        PiiPatternsOptions(phone_regions=["US", "ZZ"])
    with pytest.raises(ValidationError, match="extra"):
        PiiPatternsOptions.model_validate({"phone_region": ["US"]})
    with pytest.raises(ValidationError):
        PiiPatternsOptions(secret_min_length=2)


def test_options_change_what_is_found() -> None:
    strict = PiiPatterns(PiiPatternsOptions(secret_min_length=20))
    assert spans(strict, 'password="Tr0ub4dor&3x!"') == []
    assert spans(build_filter(), 'password="Tr0ub4dor&3x!"') == [(GENERIC_SECRET, "Tr0ub4dor&3x!")]


def test_registered_through_its_entry_point() -> None:
    gateway = Gateway(parse_config({"dlp": {"filters": {"pii_patterns": {}}}}))
    cls = gateway.dlp_filters.get("pii_patterns")
    assert cls is PiiPatterns
    assert gateway.dlp_filters.owner("pii_patterns") == "pii_patterns"
    dlp = cls(cls.Options.model_validate({}))
    assert dlp.entity_types == ALL_TYPES
    assert not dlp.threaded


async def test_find_async_answers_like_find() -> None:
    dlp = build_filter()
    await dlp.start()
    found = await dlp.find_async("write to bob@example.org", ALL_TYPES)
    assert found == [Finding(EMAIL_ADDRESS, 9, 24)]
