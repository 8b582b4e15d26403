"""Addresses: e-mail addresses and IP addresses (IPv4 and IPv6, validated by :mod:`ipaddress`).

An e-mail address is looked for only around an ``@`` (not the one of a URL's user information,
``https://user:password@host``). A dotted quad is an IPv4 address when every
part is at most 255 without leading zeros and it is not part of a longer dotted number; one that
follows the word *version* (or *ver*, *release*, *build*, *section*, ``§``, a comparison such as
``>=``) is a version or section number, not an address. IPv6
candidates are found from two colons at most four hex digits apart, and must hold a digit (so code
such as ``Add::add`` is not an address) and a group of three hex digits or more (``fe80::1``, not a
slice such as ``x[1::2]``); ``::1`` is the one exception.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from gateway_core import Finding
from plugins.dlp.pii_patterns.entities import (
    EMAIL_ADDRESS,
    IP_ADDRESS,
    WORD_START,
    glued_before,
    is_word_char,
)

_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_MAX_LOCAL = 64
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24})(?![A-Za-z0-9-])")
#: "Top-level domains" that are file extensions (``icon@2x.png``).
_FILE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "pdf", "ico"})

_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
#: What makes a dotted quad a version or a section number: a word, ``§``, or a comparison (``>=``).
VERSION_WORD = (
    r"(?:"
    + WORD_START
    + r"(?i:version|ver|release|build|v|section|sec|chapter)\.?|§|==|!=|[<>~^])[ \t]*[:=]?[ \t]*"
)
_VERSION_WORD = re.compile(VERSION_WORD + r"\Z")
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:")
_IPV6_TAIL_CHARS = _IPV6_CHARS | {"."}


def find_emails(text: str) -> Iterator[Finding]:
    at = text.find("@")
    while at != -1:
        start = at
        while start > 0 and at - start < _MAX_LOCAL and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        if start > 0 and text[start - 1] == "\\" and text[start] in "ntr":
            start += 1  # "\\nalice@example.com" in a JSON-escaped text
        while start < at and text[start] == ".":
            start += 1
        domain = _DOMAIN.match(text, at + 1)
        if (
            domain is not None
            and not _url_user(text, at)
            and start < at
            and text[at - 1] != "."
            and domain.group(1).lower() not in _FILE_EXTENSIONS
        ):
            yield Finding(EMAIL_ADDRESS, start, domain.end())
            at = text.find("@", domain.end())
        else:
            at = text.find("@", at + 1)


def _url_user(text: str, at: int) -> bool:
    """Whether the ``@`` ends the user information of a URL (``https://user:pass@host``)."""
    scheme = text.rfind("://", max(0, at - 256), at)
    return scheme != -1 and not any(char.isspace() for char in text[scheme:at])


def find_ipv4(text: str, pos: int = 0, endpos: int | None = None) -> Iterator[Finding]:
    """IPv4 addresses in ``text[pos:endpos]`` (the numbers' scan finds where dotted digits are)."""
    for match in _IPV4.finditer(text, pos, len(text) if endpos is None else endpos):
        start, end = match.span()
        if glued_before(text, start, "."):
            continue
        if end < len(text) and (
            is_word_char(text[end]) or (text[end] == "." and end + 1 < len(text) and text[end + 1].isdigit())
        ):
            continue
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        if _VERSION_WORD.search(text, max(0, start - 20), start):
            continue
        yield Finding(IP_ADDRESS, start, end)


def find_ipv6(text: str) -> Iterator[Finding]:
    size = len(text)
    hint = _IPV6_HINT.search(text)
    while hint is not None:
        start = hint.start()
        while start > 0 and text[start - 1] in _IPV6_CHARS:
            start -= 1
        end = hint.end()
        while end < size and text[end] in _IPV6_TAIL_CHARS:
            end += 1
        while end > start and text[end - 1] == ".":
            end -= 1
        candidate = text[start:end]
        if candidate.endswith(":") and not candidate.endswith("::"):
            candidate, end = candidate[:-1], end - 1
        if candidate.startswith(":") and not candidate.startswith("::"):
            candidate, start = candidate[1:], start + 1
        if _ipv6_ok(text, start, end, candidate):
            yield Finding(IP_ADDRESS, start, end)
        hint = _IPV6_HINT.search(text, max(end, hint.end()))


def _ipv6_ok(text: str, start: int, end: int, candidate: str) -> bool:
    if glued_before(text, start) or (end < len(text) and is_word_char(text[end])):
        return False
    if not any(char.isdigit() for char in candidate):
        return False
    if candidate != "::1" and max(map(len, candidate.split(":"))) < 3:
        return False  # Python slices (x[::2], a[1::3]) are valid addresses, but never written ones
    if "::" not in candidate and candidate.count(":") < 6:
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True
