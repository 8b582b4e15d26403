"""Numbers written with digits and separators: payment cards, US social security numbers, phone
numbers; and IBANs.

One tokenizer finds every run of digits joined by single separators (space, dash, dot, a bracketed
area code), so a number is examined once and reported as one type: the shape of a social security
number (3-2-4) wins, then a payment card (Luhn checksum and a known issuer), then a phone number
(parsed and validated by ``phonenumbers``); bare digits are a phone number only written
internationally (``+14155550132``) or after a word such as *phone*, *call* or *mobile*. A run glued
to letters or digits (UUIDs, invoice ids, tracking numbers) is nothing; a run that is not a number as
a whole is tried, as a card or a social security number, without its first or last groups ("in 2019
4111 1111 1111 1111").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence

import phonenumbers

from gateway_core import Finding
from plugins.dlp.pii_patterns.entities import (
    CREDIT_CARD,
    IBAN_CODE,
    IP_ADDRESS,
    PHONE_NUMBER,
    US_SSN,
    WORD_START,
    glued_before,
    is_word_char,
)
from plugins.dlp.pii_patterns.network import find_ipv4

#: Digits joined by single separators or bracketed groups: ``+1 (415) 555-0132``, ``4111 1111 ...``.
#: (It starts with one digit: a pattern whose first item is a character set is scanned for quickly.
#: A ``+`` or ``(`` before it is taken afterwards.)
_RUN = re.compile(r"[0-9][0-9]*+\)?(?:(?:[ .\-]|[ .\-]?\([0-9]{1,5}\)[ .\-]?)[0-9]++)*+")
_GROUP = re.compile(r"\d+")
#: Shortest run that can be a phone number, a card or a social security number.
_MIN_CHARS = 7
#: Most groups a run may lose when it is not a number as a whole.
_MAX_TRIES = 4
_SSN_CONTEXT = re.compile(r"(?i)" + WORD_START + r"(?:ssn|ss#|social[ -]security)")
#: How far before bare digits the words "SSN" or "social security" may be.
SSN_CONTEXT_CHARS = 40
_DATE = re.compile(r"(?:\d{4}([-./])\d{1,2}\1\d{1,2}|\d{1,2}([-./])\d{1,2}\2\d{4})(?!\d)")
#: Words that make bare digits a phone number, at most this far before them.
PHONE_CONTEXT = re.compile(
    r"(?i)"
    + WORD_START
    + r"(?:phone|tel|telephone|call|calling|mobile|cell|fax|sms|text|whatsapp|contact|reach|dial|ring|"
    r"landline|hotline|ph|mob)\b"
)
PHONE_CONTEXT_CHARS = 40
#: Words before a bare number that make it an identifier rather than a phone number.
_ID_WORDS = re.compile(
    r"(?i)"
    + WORD_START
    + r"(?:po|order|invoice|ref|reference|id|account|acct|ticket|case|tracking|sku|batch|serial|"
    r"build|version|isbn|ein|part)\.?[ \t]*[:#]?[ \t]*\Z"
)
_KNOWN_FAKE_SSNS = frozenset({"123456789", "078051120", "219099999"})

_IBAN = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?")
#: Length of the IBANs of each country (SWIFT's IBAN registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26,
    "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def find_numbers(text: str, wanted: frozenset[str], regions: tuple[str, ...]) -> Iterator[Finding]:
    """Cards, social security numbers, phone numbers, IBANs and IPv4 addresses (those of ``wanted``)
    in ``text``: one scan for runs of digits, each run examined once."""
    ibans, ipv4 = IBAN_CODE in wanted, IP_ADDRESS in wanted
    numbers = bool(wanted & {CREDIT_CARD, US_SSN, PHONE_NUMBER})
    taken = 0  # the end of the last IBAN: its groups are not numbers of their own
    for run in _RUN.finditer(text):
        start, end = run.span()
        if start < taken:
            continue
        country = text[max(0, start - 2) : start]
        if len(country) == 2 and country.isalpha() and country.isupper():
            iban, shaped = _iban_at(text, start - 2)
            if shaped:
                # An IBAN, or one with a wrong checksum: its groups are not numbers of their own.
                taken = shaped
                if iban is not None and ibans:
                    yield iban
                continue
        if end - start < _MIN_CHARS and (end - start < _MIN_CHARS - 2 or text[start - 1 : start] not in "(+"):
            continue  # too short for any number, even with a "(" or "+" before it
        if ipv4 and run.group().count(".") >= 3:
            addresses = list(find_ipv4(text, start, end))
            if addresses:
                yield from addresses
                continue
        if not numbers:
            continue
        if ")" in run.group():
            start, end = _with_brackets(text, start, end, run.group())
        if start > 0 and text[start - 1] == "+":
            start -= 1
        if end - start < _MIN_CHARS or _glued(text, start, end):
            continue
        date = _DATE.match(text, start, end)
        if date is not None and date.end() == end:
            continue  # a date as a whole (2026-03-15) is no number of any type
        found = _classify(text, start, end, regions)
        if found is None:
            found = _classify_parts(text, start, end, text[start:end])
        if found is not None and found.entity_type in wanted:
            yield found


def _with_brackets(text: str, start: int, end: int, value: str) -> tuple[int, int]:
    """A run whose first group is closed by ``)``: an area code with its ``(`` (``(415) 555-0132``),
    else cut there (``(4111111111111111)``)."""
    close = value.find(")")
    if close != -1 and value[:close].isdigit():
        if close <= 5 and start > 0 and text[start - 1] == "(":
            return start - 1, end
        return start, start + close
    return start, end


def _iban_at(text: str, start: int) -> tuple[Finding | None, int]:
    """The IBAN at ``text[start]``, printed whole or in groups of four, with its country's length and
    checksum; and where what is shaped like one ends (0 when nothing is)."""
    if glued_before(text, start):
        return None, 0
    match = _IBAN.match(text, start)
    if match is None:
        return None, 0
    value = match.group()
    length = IBAN_LENGTHS.get(value[:2])
    if length is None:
        return None, 0
    # The groups may run on into a following word: the IBAN ends where its length says.
    seen = index = 0
    while seen < length and index < len(value):
        seen += value[index] != " "
        index += 1
    if seen < length:
        return None, match.end()
    end = start + index
    if (end < len(text) and is_word_char(text[end])) or not iban_checksum_ok(value[:index].replace(" ", "")):
        return None, match.end()
    return Finding(IBAN_CODE, start, end), end


def iban_checksum_ok(iban: str) -> bool:
    """The ISO 13616 check: the IBAN moved by four characters, read in base 36, modulo 97 is 1."""
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in moved)) % 97 == 1


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of payment card numbers."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def card_issuer_ok(digits: str) -> bool:
    """Whether ``digits`` starts like a card of a known network, with one of its lengths."""
    size = len(digits)
    two, four, six = int(digits[:2]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":  # Visa
        return size in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return size == 16
    if two in (34, 37):  # American Express
        return size == 15
    if four == 6011 or 644 <= four // 10 <= 649 or two == 65 or 622126 <= six <= 622925:  # Discover
        return 16 <= size <= 19
    if 300 <= four // 10 <= 305 or two in (36, 38, 39):  # Diners Club
        return 14 <= size <= 19
    if 3528 <= four <= 3589 or two == 62 or 2200 <= four <= 2204:  # JCB, UnionPay, Mir
        return 16 <= size <= 19
    if four in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763):  # Maestro
        return 13 <= size <= 19
    return False


def ssn_ok(digits: str) -> bool:
    """The Social Security Administration's rules: no area 000, 666 or 9xx, group 00, serial 0000;
    and not one of the numbers printed in examples."""
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return not (
        area in ("000", "666")
        or area[0] == "9"
        or group == "00"
        or serial == "0000"
        or digits in _KNOWN_FAKE_SSNS
        or len(set(digits)) == 1
    )


def _glued(text: str, start: int, end: int) -> bool:
    """Whether the run at ``text[start:end]`` is part of a longer token (``INV-2024-00123``, a UUID)."""
    if start > 0:
        before = text[start - 1]
        if glued_before(text, start) or (before in "-./" and start > 1 and text[start - 2].isalnum()):
            return True
    if end < len(text):
        after = text[end]
        if is_word_char(after) or (after in "-./" and end + 1 < len(text) and text[end + 1].isalnum()):
            return True
    return False


def _classify(
    text: str, start: int, end: int, regions: tuple[str, ...], phones: bool = True
) -> Finding | None:
    """What the number at ``text[start:end]`` is, if anything."""
    value = text[start:end]
    groups = _GROUP.findall(value)
    digits = "".join(groups)
    size = len(digits)
    separators = {char for char in value if not char.isdigit()}
    lengths = [len(group) for group in groups]
    # 3-2-4 with one separator: a social security number or nothing.
    if lengths == [3, 2, 4] and len(separators) == 1 and separators <= {"-", " "}:
        return Finding(US_SSN, start, end) if ssn_ok(digits) else None
    if size == 9 and not separators and _SSN_CONTEXT.search(text, max(0, start - SSN_CONTEXT_CHARS), start):
        return Finding(US_SSN, start, end) if ssn_ok(digits) else None
    if 13 <= size <= 19 and _card_shaped(separators, lengths):
        if card_issuer_ok(digits) and luhn_ok(digits):
            return Finding(CREDIT_CARD, start, end)
        return None
    if phones and _phone_shaped(text, start, value, separators, lengths) and valid_phone(value, regions):
        return Finding(PHONE_NUMBER, start, end)
    return None


def _classify_parts(text: str, start: int, end: int, value: str) -> Finding | None:
    """A card or social security number inside the run: without its first groups, else without its
    last ones. (Not a phone number: too many pieces of longer numbers are valid short national ones.)"""
    spans = [match.span() for match in _GROUP.finditer(value)]
    if len(spans) < 2:
        return None
    tries = 0
    for first in range(1, len(spans)):
        part_start = spans[first][0]
        if value[part_start - 1] != " ":
            continue  # split only where words are: 0.5588917345860708 is a decimal
        if end - start - part_start < _MIN_CHARS or tries == _MAX_TRIES:
            break
        tries += 1
        found = _classify(text, start + part_start, end, (), phones=False)
        if found is not None:
            return found
    for last in range(len(spans) - 2, -1, -1):
        part_end = spans[last][1]
        if value[part_end] != " ":
            continue
        if part_end < _MIN_CHARS or tries == _MAX_TRIES:
            break
        tries += 1
        found = _classify(text, start, start + part_end, (), phones=False)
        if found is not None:
            return found
    return None


def _card_shaped(separators: set[str], lengths: Sequence[int]) -> bool:
    """Bare, or groups (the first of 4 digits) joined by one kind of space or dash."""
    if not separators:
        return True
    if len(separators) > 1 or not separators <= {" ", "-"} or lengths[0] != 4:
        return False
    return all(3 <= length <= 6 for length in lengths[1:-1])


def _phone_shaped(text: str, start: int, value: str, separators: set[str], lengths: Sequence[int]) -> bool:
    """What a phone number can look like, before asking ``phonenumbers`` (which is slow)."""
    size = sum(lengths)
    if not 7 <= size <= 17:
        return False
    international = value[0] == "+" or value.startswith("00")
    if "." in separators and not (international or lengths == [3, 3, 4]):
        return False  # versions, dates and decimals; 415.555.0132 is a phone number
    if _DATE.match(value):
        return False  # dates: 2024-03-15, 15.03.2024, 2024-03-15 14:30
    if lengths[-1] == 1:
        return False  # ISBNs end with one check digit; phone numbers never do
    if not separators and not international and size < 10 and value[0] != "0":
        return False  # a bare number is a phone with all its digits or a trunk prefix
    if (start > 0 and text[start - 1] == "#") or text[max(0, start - 2) : start] == "# ":
        return False  # order #, ticket #
    if separators or international:
        return True
    # Bare digits (2147483647, ids, timestamps) are a phone number only after a word that says so.
    window = max(0, start - PHONE_CONTEXT_CHARS)
    return bool(PHONE_CONTEXT.search(text, window, start)) and not _ID_WORDS.search(text, window, start)


@functools.lru_cache(maxsize=4096)
def valid_phone(value: str, regions: tuple[str, ...]) -> bool:
    """Whether ``phonenumbers`` reads ``value`` as a valid number, international or national in one of
    ``regions``. Cached: it costs about 25 µs, and a conversation sends the same numbers every turn."""
    if value.startswith("00") and not value.startswith("000"):
        value = "+" + value[2:]
    elif value.startswith("011") and "US" in regions:
        value = "+" + value[3:]
    for region in (None,) if value[0] == "+" else regions:
        if region is not None and not _national_prefix_ok(value, region):
            continue
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


def _national_prefix_ok(value: str, region: str) -> bool:
    """Whether a number without its country code starts as national numbers do in ``region``: with
    the trunk prefix where there is one (``020 ...`` in GB, ``030 ...`` in DE), but for the countries
    of the North American plan, whose numbers are written without it."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if metadata is None or metadata.country_code == 1 or not metadata.national_prefix:
        return True
    first = value.lstrip("(")
    return first.startswith(metadata.national_prefix)
