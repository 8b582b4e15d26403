"""What a data-loss-prevention filter implements: finding sensitive values in a text.

A filter only *detects*. The core does everything else the same way for every filter: it walks every
text of a request (and of the answer, streams included), asks each active filter for its findings,
applies the action the operator chose per entity type (redact, mask, hash, block, pseudonymize, log),
holds back the end of a streamed text while it could still become a match, fails closed when a filter
raises or times out, and records the findings (types and counts, never values) in the usage log.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel

from gateway_core.providers import NoOptions

#: The trailing run of non-whitespace characters of a text (the default hold-back of a stream).
_LAST_WORD = re.compile(r"\S*\Z")


@dataclass(frozen=True, slots=True)
class Finding:
    """One sensitive value found in a text: its entity type and where it is (``text[start:end]``)."""

    entity_type: str
    start: int
    end: int
    #: How sure the filter is, from 0 to 1 (filters with validated patterns report 1).
    score: float = 1.0


class DlpFilter:
    """Base class of DLP filters, registered with ``lockgate_register_dlp_filters``.

    The core builds one instance per filter named under ``dlp.filters`` in the configuration, with
    that entry's options validated against :attr:`Options`, then awaits :meth:`start` once before
    serving. Per request it calls :meth:`find` (through :meth:`find_async`) on each text, and on a
    streamed answer :meth:`holdback` to know how much of the text's end to keep until more arrives.

    Subclasses set :attr:`name`, :attr:`entity_types` and implement :meth:`find`. A filter whose
    detection is slow (a model, a remote service) sets :attr:`threaded` or overrides
    :meth:`find_async`; the core bounds every call by ``dlp.timeout`` and refuses the request when
    a filter raises or takes longer (unless the operator chose ``on_error: allow``).
    """

    name: ClassVar[str] = ""
    #: Pydantic model of the filter's options (the mapping under ``dlp.filters.<name>``).
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: The entity types this filter can report, e.g. ``EMAIL_ADDRESS``. A policy naming a type that
    #: no configured filter reports is a start-up error. Instances may narrow or extend it in
    #: ``__init__`` or :meth:`start` (what an installed model can find).
    entity_types: frozenset[str] = frozenset()
    #: Run :meth:`find` in a worker thread (CPU-heavy detection such as named-entity recognition),
    #: so the event loop keeps serving and the call can be abandoned at the timeout.
    threaded: ClassVar[bool] = False

    def __init__(self, options: BaseModel) -> None:
        self.options = options

    async def start(self) -> None:
        """Load what detection needs, once, before the first request. Raise
        :class:`~gateway_core.ConfigError` naming what to install when something is missing: a
        filter that cannot work must stop start-up, never let data through unfiltered."""

    async def stop(self) -> None:
        """Release what :meth:`start` loaded (at shutdown)."""

    def find(self, text: str, entity_types: frozenset[str]) -> Iterable[Finding]:
        """The sensitive values in ``text`` of the types in ``entity_types`` (a subset of
        :attr:`entity_types`). Findings may overlap and come in any order; the core keeps, of
        overlapping ones, the longest. Raise to signal a failure (the request is refused)."""
        raise NotImplementedError

    async def find_async(self, text: str, entity_types: frozenset[str]) -> list[Finding]:
        """:meth:`find`, in a worker thread when :attr:`threaded`. Override for detection that
        awaits (a remote service)."""
        if self.threaded:
            return await asyncio.to_thread(lambda: list(self.find(text, entity_types)))
        return list(self.find(text, entity_types))

    def holdback(self, text: str, entity_types: frozenset[str]) -> int:
        """Where the shortest end of ``text`` that could still become, or grow into, a match starts
        (``len(text)`` when none could).

        For streamed answers: the core releases ``text[:holdback]`` to the client at once and waits
        for the next piece before deciding on the rest, so a value split across chunks
        (``"alice@exa"`` + ``"mple.com"``) is still caught. Keep whatever context :meth:`find` needs
        to recognise the value (a ``key=`` before a secret). The default holds back the last run of
        non-whitespace characters, enough for values without spaces.
        """
        found = _LAST_WORD.search(text)
        return found.start() if found is not None else len(text)
