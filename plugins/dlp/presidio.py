"""Presidio: Microsoft Presidio's analyzer in process, with named entities when given a spaCy model.

``spacy_model`` chooses what it finds:

* none (the default): Presidio's pattern recognizers only: credit cards, IBANs, crypto wallets,
  e-mail and IP addresses, phone numbers, URLs, dates, US SSNs and other national identifiers. No
  model is needed: texts are tokenized by spaCy's blank pipeline for ``language``, with each word's
  lower case as its lemma, so Presidio's context words still count (``card`` or ``phone`` next to a
  number raises its score).
* a spaCy pipeline (an installed package such as ``en_core_web_lg``, or the path of a saved
  pipeline): the same, plus the named entities the pipeline's recognizer finds, through Presidio's
  ``SpacyRecognizer`` (PERSON, LOCATION, NRP, ORGANIZATION, DATE_TIME: those its labels map to).

Nothing is downloaded at run time. Presidio and the model are loaded when the filter starts (never
when the gateway loads its plugins); when either is missing, start-up stops with the command that
installs it. Presidio's e-mail recognizer checks domains with ``tldextract``, which fetches the
public suffix list on first use; this filter's recognizer reads the list bundled with tldextract.

Detection is CPU-bound (the spaCy pipeline, then every recognizer's patterns): it runs in a worker
thread.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from gateway_core import ConfigError, DlpFilter, Finding, hookimpl

if TYPE_CHECKING:
    import tldextract
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
    from spacy.language import Language
    from spacy.tokens import Doc

NAME = "presidio"
INSTALL_PRESIDIO = "the presidio DLP filter needs Microsoft Presidio: pip install 'lockgate[presidio]'"

#: spaCy's entity labels and the Presidio entity types they stand for (Presidio's mapping for spaCy).
SPACY_LABELS = {
    "PER": "PERSON",
    "PERSON": "PERSON",
    "NORP": "NRP",
    "FAC": "LOCATION",
    "LOC": "LOCATION",
    "GPE": "LOCATION",
    "LOCATION": "LOCATION",
    "ORG": "ORGANIZATION",
    "ORGANIZATION": "ORGANIZATION",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
}
#: The end of a streamed text held back: the words starting in its last characters (a name of a few
#: words, a card number or an IBAN written in groups), and the last word whole however long.
HOLDBACK_CHARS = 64
_WORD_START = re.compile(r"(?<!\S)\S")
#: The spaCy component that gives words their lower case as lemma (pipelines without a lemmatizer).
LOWERCASE_LEMMAS = "lockgate_lowercase_lemmas"


class PresidioOptions(BaseModel):
    """Options under ``dlp.filters.presidio``."""

    model_config = ConfigDict(extra="forbid")

    language: str = Field("en", description="language of the texts, as spaCy and Presidio name it")
    spacy_model: str | None = Field(
        None,
        description="spaCy pipeline for named entities: an installed package (`en_core_web_lg`) or "
        "the path of a saved pipeline; none: Presidio's pattern recognizers only",
    )
    score_threshold: float = Field(
        0.5, ge=0, le=1, description="findings Presidio scores lower (0 to 1) are not reported"
    )
    entities: list[str] | None = Field(
        None, min_length=1, description="report only these entity types (default: all the analyzer finds)"
    )


class Presidio(DlpFilter):
    name = NAME
    Options = PresidioOptions
    threaded = True

    def __init__(self, options: BaseModel) -> None:
        assert isinstance(options, PresidioOptions)
        super().__init__(options)
        self.settings = options
        self._analyzer: AnalyzerEngine | None = None

    async def start(self) -> None:
        self._analyzer, self.entity_types = await asyncio.to_thread(build_analyzer, self.settings)

    async def stop(self) -> None:
        self._analyzer = None

    def find(self, text: str, entity_types: frozenset[str]) -> Iterable[Finding]:
        if self._analyzer is None:
            raise RuntimeError("the presidio DLP filter is not started")
        wanted = entity_types & self.entity_types
        # An empty list would ask Presidio for every type.
        if not wanted or not text.strip():
            return []
        results = self._analyzer.analyze(text=text, language=self.settings.language, entities=sorted(wanted))
        return [
            Finding(result.entity_type, result.start, result.end, result.score)
            for result in results
            if result.entity_type in wanted
        ]

    def holdback(self, text: str, entity_types: frozenset[str]) -> int:
        last_word = super().holdback(text, entity_types)
        window = len(text) - HOLDBACK_CHARS
        if last_word <= window:
            return last_word
        found = _WORD_START.search(text, max(window, 0))
        return found.start() if found is not None else len(text)


def build_analyzer(options: PresidioOptions) -> tuple[AnalyzerEngine, frozenset[str]]:
    """Presidio's analyzer for ``options``, ready to serve, and the entity types it reports."""
    try:
        import tldextract
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import EmailRecognizer, SpacyRecognizer
    except ImportError as error:
        raise ConfigError(INSTALL_PRESIDIO) from error

    nlp = load_pipeline(options)
    labels = entity_labels(nlp)
    mapping = {label: SPACY_LABELS[label] for label in labels if label in SPACY_LABELS}
    ner = NerModelConfiguration(
        model_to_presidio_entity_mapping=mapping, labels_to_ignore=sorted(labels - mapping.keys())
    )
    engine = SpacyNlpEngine(
        models=[{"lang_code": options.language, "model_name": options.spacy_model or "blank"}],
        ner_model_configuration=ner,
    )
    # Loaded here, so that Presidio never tries to download a missing model itself (its annotations
    # type ``nlp`` as its value before loading).
    engine.nlp = {options.language: nlp}  # type: ignore[assignment]

    registry = RecognizerRegistry(supported_languages=[options.language])
    with _quiet(logging.getLogger("presidio-analyzer")):  # "not added" for every other language
        registry.load_predefined_recognizers(languages=[options.language])
    registry.remove_recognizer(SpacyRecognizer.__name__)
    if mapping:
        registry.add_recognizer(
            SpacyRecognizer(
                supported_language=options.language, supported_entities=sorted(set(mapping.values()))
            )
        )
    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    for recognizer in registry.recognizers:
        if isinstance(recognizer, EmailRecognizer):
            recognizer.validate_result = _domain_check(offline)  # type: ignore[method-assign,assignment]

    analyzer = AnalyzerEngine(
        registry=registry,
        nlp_engine=engine,
        supported_languages=[options.language],
        default_score_threshold=options.score_threshold,
        context_aware_enhancer=context_enhancer(),
    )
    supported = frozenset(analyzer.get_supported_entities(options.language))
    if options.entities is None:
        entity_types = supported
    else:
        unknown = sorted(set(options.entities) - supported)
        if unknown:
            raise ConfigError(
                f"dlp.filters.{NAME}.entities: {', '.join(unknown)} not found by this analyzer "
                f"(it finds {', '.join(sorted(supported))})"
            )
        entity_types = frozenset(options.entities)
    # Recognizers load on first use: done now rather than in the first request.
    analyzer.analyze(text="warm-up: a@example.com", language=options.language)
    return analyzer, entity_types


def load_pipeline(options: PresidioOptions) -> Language:
    """The spaCy pipeline: the configured model, else the blank pipeline of the language."""
    import spacy
    from spacy.language import Language

    if options.spacy_model is None:
        try:
            nlp = spacy.blank(options.language)
        except ImportError as error:
            raise ConfigError(
                f"dlp.filters.{NAME}.language: spaCy has no language {options.language!r}: {error}"
            ) from error
    else:
        model = options.spacy_model
        if not (spacy.util.is_package(model) or Path(model).exists()):
            raise ConfigError(
                f"dlp.filters.{NAME}.spacy_model: the spaCy model {model!r} is not installed: "
                f"python -m spacy download {model} (or give the path of a saved pipeline)"
            )
        try:
            nlp = spacy.load(model)
        except (OSError, ValueError, ImportError) as error:
            raise ConfigError(f"dlp.filters.{NAME}.spacy_model: cannot load {model!r}: {error}") from error
        if nlp.lang != options.language:
            raise ConfigError(
                f"dlp.filters.{NAME}.spacy_model: {model!r} is a pipeline for {nlp.lang!r}, "
                f"not for language {options.language!r}"
            )
    if "lemmatizer" not in nlp.pipe_names:
        if not Language.has_factory(LOWERCASE_LEMMAS):
            Language.component(LOWERCASE_LEMMAS, func=_lowercase_lemmas)
        nlp.add_pipe(LOWERCASE_LEMMAS)
    return nlp


def entity_labels(nlp: Language) -> set[str]:
    """The labels of the entities the pipeline's components find (those that set ``doc.ents``)."""
    labels: set[str] = set()
    for name, component in nlp.pipeline:
        if "doc.ents" in nlp.get_pipe_meta(name).assigns:
            labels.update(getattr(component, "labels", ()))
    return labels


def context_enhancer() -> ContextAwareEnhancer:
    """Presidio's context enhancer (context words before a match raise its score), in linear time.

    Presidio's own walks the text's tokens from the start, and its keyword list, for every match: a
    long text with many findings costs their product (seconds for 100 KB of personal data). This one
    finds a match's token by bisection and looks keywords up in a set; its results are the same.
    """
    from presidio_analyzer import EntityRecognizer, RecognizerResult
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
    from presidio_analyzer.nlp_engine import NlpArtifacts

    class LinearEnhancer(LemmaContextAwareEnhancer):
        def enhance_using_context(
            self,
            text: str,
            raw_results: list[RecognizerResult],
            nlp_artifacts: NlpArtifacts,
            recognizers: list[EntityRecognizer],
            context: list[str] | None = None,
        ) -> list[RecognizerResult]:
            nlp_artifacts.keywords = _Keywords(nlp_artifacts.keywords)
            return super().enhance_using_context(text, raw_results, nlp_artifacts, recognizers, context)

        @staticmethod
        def _find_index_of_match_token(word: str, start: int, tokens: Any, tokens_indices: list[int]) -> int:
            # The first token ending after ``start``: the last one starting at or before it, else the next.
            index = bisect.bisect_right(tokens_indices, start) - 1
            if index < 0 or start >= tokens_indices[index] + len(tokens[index]):
                index += 1
            if index >= len(tokens_indices):
                raise ValueError(f"no token of the text at {start} (match {word!r})")
            return index

    return LinearEnhancer()


class _Keywords(list[str]):
    """A list of words whose membership test is a set's."""

    def __init__(self, words: Iterable[str]) -> None:
        super().__init__(words)
        self._set = frozenset(self)

    def __contains__(self, word: object) -> bool:
        return word in self._set


def _lowercase_lemmas(doc: Doc) -> Doc:
    for token in doc:
        token.lemma_ = token.lower_
    return doc


def _domain_check(extract: Callable[[str], tldextract.ExtractResult]) -> Callable[[str], bool]:
    """Presidio's e-mail validation (a domain under a public suffix) with ``extract``."""

    def has_domain(pattern_text: str) -> bool:
        return extract(pattern_text).fqdn != ""

    return has_domain


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Only errors of ``logger`` for the duration."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@hookimpl
def lockgate_register_dlp_filters(register: Callable[[str, type[DlpFilter]], None]) -> None:
    register(NAME, Presidio)
