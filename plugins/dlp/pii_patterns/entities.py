"""The entity types of ``pii_patterns`` and the small helpers its detector families share."""

from __future__ import annotations

import math
from collections import Counter

EMAIL_ADDRESS = "EMAIL_ADDRESS"
PHONE_NUMBER = "PHONE_NUMBER"
US_SSN = "US_SSN"
CREDIT_CARD = "CREDIT_CARD"
IBAN_CODE = "IBAN_CODE"
IP_ADDRESS = "IP_ADDRESS"
OPENAI_API_KEY = "OPENAI_API_KEY"
ANTHROPIC_API_KEY = "ANTHROPIC_API_KEY"
GOOGLE_API_KEY = "GOOGLE_API_KEY"
AWS_ACCESS_KEY = "AWS_ACCESS_KEY"
GITHUB_TOKEN = "GITHUB_TOKEN"  # noqa: S105 (a type name, not a secret)
SLACK_TOKEN = "SLACK_TOKEN"  # noqa: S105 (a type name, not a secret)
JWT = "JWT"
PRIVATE_KEY = "PRIVATE_KEY"
GENERIC_SECRET = "GENERIC_SECRET"  # noqa: S105 (a type name, not a secret)

#: Numbers that may be printed in groups (cards, phones, IBANs, social security numbers).
NUMBER_TYPES = frozenset({PHONE_NUMBER, US_SSN, CREDIT_CARD, IBAN_CODE})
#: What one scan for runs of digits finds (IPv4 addresses too).
DIGIT_TYPES = NUMBER_TYPES | {IP_ADDRESS}
NETWORK_TYPES = frozenset({EMAIL_ADDRESS, IP_ADDRESS})
#: Credentials recognised by their vendor's prefix.
KEY_TYPES = frozenset(
    {OPENAI_API_KEY, ANTHROPIC_API_KEY, GOOGLE_API_KEY, AWS_ACCESS_KEY, GITHUB_TOKEN, SLACK_TOKEN, JWT}
)
SECRET_TYPES = KEY_TYPES | {PRIVATE_KEY, GENERIC_SECRET}
ALL_TYPES = NUMBER_TYPES | NETWORK_TYPES | SECRET_TYPES | {IBAN_CODE}


#: Where a word starts, in a regular expression: ``\\b``, or after a JSON escape (``\\nSSN``).
WORD_START = r"(?:(?<=\\[ntr])|\b)"


def is_word_char(char: str) -> bool:
    """Whether ``char`` continues a word (a value next to one is part of something longer)."""
    return char.isalnum() or char == "_"


def glued_before(text: str, start: int, also: str = "") -> bool:
    """Whether ``text[start]`` continues a word (or follows one of ``also``). A JSON escape such as
    ``\\n`` ends the word before it: texts may be JSON-escaped fragments (tool-call arguments)."""
    if start == 0:
        return False
    before = text[start - 1]
    if before in also:
        return True
    if not is_word_char(before):
        return False
    return not (before in "ntr" and start > 1 and text[start - 2] == "\\")


def entropy(value: str) -> float:
    """Shannon entropy of ``value`` in bits per character."""
    size = len(value)
    if size == 0:
        return 0.0
    return -sum(count / size * math.log2(count / size) for count in Counter(value).values())


def character_classes(value: str) -> int:
    """How many of lower case, upper case, digits and other characters ``value`` mixes (``_`` and
    ``-``, which join the words of identifiers, are not counted)."""
    lower = upper = digit = other = 0
    for char in value:
        if char.islower():
            lower = 1
        elif char.isupper():
            upper = 1
        elif char.isdigit():
            digit = 1
        elif char not in "_-":
            other = 1
    return lower + upper + digit + other
