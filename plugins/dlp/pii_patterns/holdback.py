"""Stream hold-back: where the shortest end of a text that could still become a match starts.

The core releases ``text[:holdback]`` of a streamed answer at once, so holding too little lets a value
split across chunks through, and holding too much only delays it. What is held, by entity type:

* every type: the last run of non-whitespace characters (an address, a key, a JWT, a bare number);
* numbers printed with separators (cards, phones, IBANs, social security numbers): the trailing run
  of digits, upper-case letters, spaces and ``+()./-``, at most :data:`NUMBER_TAIL_CHARS`;
* US_SSN and PHONE_NUMBER: also the words that make bare digits one ("SSN", "social security";
  "phone", "call", ...) while the digits could still follow them;
* IP_ADDRESS: the word "version" (and the others that make a dotted quad a version) while its number
  could still follow, so a version streamed in pieces is not taken for an address;
* GENERIC_SECRET: an assignment whose value could still grow or ends in the last word, from its key
  (``password = "hun``), and a secret's key name waiting for its operator;
* PRIVATE_KEY: a ``-----BEGIN`` line not yet closed by its ``-----END`` line, at most
  :data:`PEM_TAIL_CHARS` back.
"""

from __future__ import annotations

import re

from plugins.dlp.pii_patterns.credentials import OPERATOR, QUOTED_CHARS, key_start
from plugins.dlp.pii_patterns.entities import (
    GENERIC_SECRET,
    IP_ADDRESS,
    NUMBER_TYPES,
    PHONE_NUMBER,
    PRIVATE_KEY,
    US_SSN,
    WORD_START,
)
from plugins.dlp.pii_patterns.network import VERSION_WORD
from plugins.dlp.pii_patterns.numbers import PHONE_CONTEXT, PHONE_CONTEXT_CHARS, SSN_CONTEXT_CHARS

#: The longest run of non-whitespace characters held (a JWT or a PEM block on one line).
WORD_TAIL_CHARS = 16384
#: The longest printed number: an IBAN of 34 characters in groups of four is 42.
NUMBER_TAIL_CHARS = 48
#: The longest assignment held: its key, its operator and its value.
ASSIGNMENT_TAIL_CHARS = 1024
PEM_TAIL_CHARS = 8192

_NUMBER_TAIL = re.compile(r"[+(0-9A-Z][0-9A-Z()./ -]*\Z")
_SSN_WORDS = re.compile(r"(?i)" + WORD_START + r"(?:ssn|ss#|social(?:[ -]security)?)")
#: An operator and a value that could still grow, or that ends in the last word (which is held, and
#: must keep its key): "Bearer" and its token count as one value.
_OPEN_ASSIGNMENT = re.compile(
    f"{OPERATOR}(?:\\\\*[\"'`])?{QUOTED_CHARS}*+(?:[ \\t]+{QUOTED_CHARS}*+)?\\S*+\\Z"
)
#: A version word and the dotted number that may still follow it (``version 4.2.``), or that the
#: number tail holds (``version 4.2.1.7 ``).
_VERSION_TAIL = re.compile(VERSION_WORD + r"[0-9.]*[0-9A-Z()./ \t-]*\Z")
_BEGIN_LINE = re.compile(r"-----BEGIN [A-Z0-9 ]*-----")
_END_LINE = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----")


def holdback(text: str, wanted: frozenset[str]) -> int:
    """Where the end of ``text`` that could still become a value of the ``wanted`` types starts."""
    size = len(text)
    cut = _last_word(text)
    if wanted & NUMBER_TYPES:
        number = _NUMBER_TAIL.search(text, max(0, size - NUMBER_TAIL_CHARS))
        if number is not None:
            cut = min(cut, number.start())
    if US_SSN in wanted:
        cut = min(cut, _words_tail(text, _SSN_WORDS, SSN_CONTEXT_CHARS + 11))
    if PHONE_NUMBER in wanted:
        cut = min(cut, _words_tail(text, PHONE_CONTEXT, PHONE_CONTEXT_CHARS + 17))
    if IP_ADDRESS in wanted:
        version = _VERSION_TAIL.search(text, max(0, size - 40))
        if version is not None:
            cut = min(cut, version.start())
    if GENERIC_SECRET in wanted:
        cut = min(cut, _assignment_tail(text))
    if PRIVATE_KEY in wanted:
        cut = min(cut, _pem_tail(text))
    return cut


def _last_word(text: str) -> int:
    """Where the trailing run of non-whitespace characters starts (string methods, not a regular
    expression: ``\\S*\\Z`` is quadratic on a long run followed by a space)."""
    size = len(text)
    if size == 0 or text[-1].isspace():
        return size
    words = text[max(0, size - WORD_TAIL_CHARS) :].rsplit(None, 1)
    return size - len(words[-1])


def _words_tail(text: str, words: re.Pattern[str], reach: int) -> int:
    """The start of the last of ``words`` that ends at most ``reach`` characters from the end."""
    size = len(text)
    last = None
    for found in words.finditer(text, max(0, size - reach - 20)):
        last = found
    if last is not None and size - last.end() <= reach:
        return last.start()
    return size


def _assignment_tail(text: str) -> int:
    size = len(text)
    assignment = _OPEN_ASSIGNMENT.search(text, max(0, size - ASSIGNMENT_TAIL_CHARS))
    for _ in range(8):  # the operators of the last few words, the first open one without a key too
        if assignment is None:
            break
        start = key_start(text, assignment.start())
        if start is not None:
            return start
        assignment = _OPEN_ASSIGNMENT.search(text, assignment.start() + 1)
    # A key whose operator has not come yet.
    head = text.rstrip(" \t\"'`\\")
    start = key_start(head + ":", len(head)) if head else None
    return size if start is None else start


def _pem_tail(text: str) -> int:
    size = len(text)
    begin = text.rfind("-----BEGIN", max(0, size - PEM_TAIL_CHARS))
    if begin == -1:
        return size
    line = _BEGIN_LINE.match(text, begin)
    if line is not None and "PRIVATE KEY" not in line.group():
        return size
    if _END_LINE.search(text, begin) is not None:
        return size
    return begin
