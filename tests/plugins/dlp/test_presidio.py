"""The ``presidio`` DLP filter: Presidio's recognizers in process, named entities with a spaCy pipeline.

No spaCy model can be downloaded here: the named-entity tests save a small real pipeline (spaCy's
blank English with an entity ruler) and give its path as ``spacy_model``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

from gateway_core import ConfigError, Gateway, parse_config
from plugins.dlp import presidio as presidio_plugin
from plugins.dlp.presidio import HOLDBACK_CHARS, Presidio, PresidioOptions

SAMPLE = (
    "Write to alice@example.com or pay with card 4111 1111 1111 1111 (IBAN DE89 3704 0044 0532 0130 00). "
    "The server's ip is 192.168.1.20 and my ssn is 536-22-1234."
)
PATTERN_TYPES = {"EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN"}
NER_TYPES = {"PERSON", "LOCATION", "NRP", "ORGANIZATION"}


async def started(**options: Any) -> Presidio:
    presidio = Presidio(PresidioOptions(**options))
    await presidio.start()
    return presidio


def found(presidio: Presidio, text: str, entity_types: set[str] | None = None) -> set[tuple[str, str]]:
    """The findings as (entity type, value)."""
    wanted = frozenset(entity_types) if entity_types is not None else presidio.entity_types
    return {
        (finding.entity_type, text[finding.start : finding.end]) for finding in presidio.find(text, wanted)
    }


@pytest.fixture(scope="module")
async def patterns() -> AsyncIterator[Presidio]:
    """The filter without a model: Presidio's pattern recognizers."""
    presidio = await started()
    yield presidio
    await presidio.stop()


@pytest.fixture(scope="module")
def pipeline_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real spaCy pipeline that finds two people and a city (as a trained model would label them)."""
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(  # type: ignore[attr-defined]
        [
            {"label": "PERSON", "pattern": "Alice Johnson"},
            {"label": "PERSON", "pattern": "Bob"},
            {"label": "GPE", "pattern": "Berlin"},
            {"label": "CARDINAL", "pattern": "seven"},
        ]
    )
    path = tmp_path_factory.mktemp("spacy") / "model"
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
async def with_model(pipeline_path: Path) -> AsyncIterator[Presidio]:
    presidio = await started(spacy_model=str(pipeline_path))
    yield presidio
    await presidio.stop()


# --- without a model -------------------------------------------------------------------------


def test_without_a_model_the_pattern_recognizers_find_sensitive_values(patterns: Presidio) -> None:
    assert found(patterns, SAMPLE) >= {
        ("EMAIL_ADDRESS", "alice@example.com"),
        ("CREDIT_CARD", "4111 1111 1111 1111"),
        ("IBAN_CODE", "DE89 3704 0044 0532 0130 00"),
        ("IP_ADDRESS", "192.168.1.20"),
        ("US_SSN", "536-22-1234"),
    }


def test_without_a_model_the_entity_types_are_the_pattern_recognizers(patterns: Presidio) -> None:
    assert patterns.entity_types >= PATTERN_TYPES | {"PHONE_NUMBER", "URL", "CRYPTO"}
    assert not patterns.entity_types & NER_TYPES


def test_context_words_in_the_text_raise_the_score(patterns: Presidio) -> None:
    # A phone number alone scores 0.4 in Presidio; the word "phone" next to it raises it past 0.5.
    assert found(patterns, "Reach me at +1 212-555-0199.", {"PHONE_NUMBER"}) == set()
    assert found(patterns, "My phone: +1 212-555-0199.", {"PHONE_NUMBER"}) == {
        ("PHONE_NUMBER", "+1 212-555-0199")
    }


def test_only_the_entity_types_asked_for_are_found(patterns: Presidio) -> None:
    assert found(patterns, SAMPLE, {"EMAIL_ADDRESS"}) == {("EMAIL_ADDRESS", "alice@example.com")}
    assert found(patterns, SAMPLE, set()) == set()


def test_findings_carry_presidio_scores(patterns: Presidio) -> None:
    findings = list(patterns.find(SAMPLE, frozenset({"CREDIT_CARD"})))
    assert [(finding.start, finding.end, finding.score) for finding in findings] == [
        (SAMPLE.index("4111"), SAMPLE.index(" (IBAN"), 1.0)
    ]


async def test_context_scores_are_presidios_own(patterns: Presidio, monkeypatch: pytest.MonkeyPatch) -> None:
    # The filter's context enhancer is Presidio's, made linear in time: same findings, same scores.
    monkeypatch.setattr(presidio_plugin, "context_enhancer", LemmaContextAwareEnhancer)
    stock = await started()
    # Context words just within and just beyond the five words Presidio looks back, odd spacing.
    text = (
        "  phone  +1 212-555-0199\n\ncard:4111 1111 1111 1111, my   ssn 536-22-1234 "
        "phone alpha bravo charlie delta +1 212-555-0198, phone alpha bravo charlie delta echo +1 212-555-0197"
        " ip\tx y z w 10.0.0.12;\nserver ip:10.0.0.13 "
    ) * 3
    assert stock.find(text, stock.entity_types) == patterns.find(text, patterns.entity_types)
    await stock.stop()


async def test_nothing_is_fetched_from_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("no network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    # tldextract's own extractor, as on a fresh host: no cached public suffix list, so it would fetch
    # one on first use (Presidio's e-mail recognizer uses it unless told otherwise).
    monkeypatch.setattr(tldextract.tldextract, "TLD_EXTRACTOR", tldextract.TLDExtract(cache_dir=None))
    presidio = await started()
    assert found(presidio, "Mail bob@example.co.uk now.") >= {("EMAIL_ADDRESS", "bob@example.co.uk")}
    await presidio.stop()
    assert attempts == []


async def test_entities_narrow_what_is_reported() -> None:
    presidio = await started(entities=["EMAIL_ADDRESS", "US_SSN"])
    assert presidio.entity_types == {"EMAIL_ADDRESS", "US_SSN"}
    await presidio.stop()


async def test_an_entity_type_the_analyzer_cannot_find_stops_start_up() -> None:
    with pytest.raises(ConfigError, match=r"dlp\.filters\.presidio\.entities: PERSON not found"):
        await started(entities=["EMAIL_ADDRESS", "PERSON"])


# --- with a spaCy model ----------------------------------------------------------------------


def test_with_a_model_named_entities_are_found_with_their_spans(with_model: Presidio) -> None:
    text = "Alice Johnson flew to Berlin with Bob; write to alice@example.com."
    findings = {
        (finding.entity_type, finding.start, finding.end)
        for finding in with_model.find(text, frozenset({"PERSON", "LOCATION"}))
    }
    assert findings == {("PERSON", 0, 13), ("LOCATION", 22, 28), ("PERSON", 34, 37)}
    assert found(with_model, text) >= {
        ("PERSON", "Alice Johnson"),
        ("LOCATION", "Berlin"),
        ("PERSON", "Bob"),
        ("EMAIL_ADDRESS", "alice@example.com"),
    }


def test_with_a_model_the_entity_types_are_its_labels_and_the_patterns(with_model: Presidio) -> None:
    # The pipeline labels PERSON and GPE (a location); its CARDINAL label stands for no Presidio type.
    assert with_model.entity_types >= PATTERN_TYPES | {"PERSON", "LOCATION"}
    assert not with_model.entity_types & {"NRP", "ORGANIZATION", "CARDINAL"}
    assert found(with_model, "Bob has seven cats") == {("PERSON", "Bob")}


# --- start-up errors -------------------------------------------------------------------------


async def test_a_model_not_installed_names_the_command_that_installs_it() -> None:
    with pytest.raises(ConfigError, match=r"python -m spacy download en_core_web_lg"):
        await started(spacy_model="en_core_web_lg")


async def test_without_presidio_start_up_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)
    with pytest.raises(ConfigError) as raised:
        await started()
    assert str(raised.value) == (
        "the presidio DLP filter needs Microsoft Presidio: pip install 'lockgate[presidio]'"
    )


async def test_a_model_for_another_language_stops_start_up(tmp_path: Path) -> None:
    spacy.blank("de").to_disk(tmp_path / "german")
    with pytest.raises(ConfigError, match=r"is a pipeline for 'de', not for language 'en'"):
        await started(spacy_model=str(tmp_path / "german"))


async def test_an_unknown_language_stops_start_up() -> None:
    with pytest.raises(ConfigError, match=r"spaCy has no language 'zz'"):
        await started(language="zz")


def test_loading_the_gateways_plugins_does_not_import_presidio() -> None:
    # Every registered plugin module is loaded at start-up, DLP on or off.
    code = (
        "import sys; from gateway_core import Gateway, parse_config; Gateway(parse_config({})); "
        "assert 'plugins.dlp.presidio' in sys.modules; "
        "assert not {'presidio_analyzer', 'spacy'} & set(sys.modules), 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])


# --- in the gateway --------------------------------------------------------------------------


def test_the_filter_is_registered_as_presidio() -> None:
    gateway = Gateway(parse_config({}))
    assert gateway.dlp_filters.get("presidio") is Presidio


async def test_a_failure_inside_presidio_is_raised_from_find(
    patterns: Presidio, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("presidio broke")

    monkeypatch.setattr(AnalyzerEngine, "analyze", fail)
    with pytest.raises(RuntimeError, match="presidio broke"):
        await patterns.find_async(SAMPLE, frozenset({"EMAIL_ADDRESS"}))


# --- streams ---------------------------------------------------------------------------------


def test_holdback_keeps_a_short_text_whole(patterns: Presidio) -> None:
    assert patterns.holdback("Say hi to Alice John", frozenset()) == 0


def test_holdback_keeps_the_words_of_the_last_characters(patterns: Presidio) -> None:
    text = "x" * 100 + " and the card is 4111 1111 11"
    start = patterns.holdback(text, frozenset())
    assert len(text) - HOLDBACK_CHARS <= start
    assert text[start:] == " and the card is 4111 1111 11".lstrip()
    ended = "lorem ipsum " * 10 + "so long, Alice Johnson "
    assert ended[patterns.holdback(ended, frozenset()) :].endswith("Alice Johnson ")


def test_holdback_keeps_a_long_last_word_whole(patterns: Presidio) -> None:
    url = "https://example.com/" + "a" * 100
    assert patterns.holdback("see " + url, frozenset()) == len("see ")
