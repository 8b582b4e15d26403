"""Credentials: vendor API keys and tokens, JWTs, PEM private keys and secrets assigned to a key.

Vendor keys are found from one scan for their prefixes (``sk-``, ``AIza``, ``AKIA``, ``ghp_``,
``xoxb-``, ``eyJ``, ...); the random part must look random (mixed character classes, Shannon entropy
of at least ``key_min_entropy`` bits per character) and hold no placeholder word, so ``sk-xxxx...``,
``sk-your-key-here`` and ``sk-test-key-0a1b2c3d`` are not reported. Random parts in base 62 must mix
lower case, upper case and digits, as real ones do. A vendor's documented example key
(``AKIAIOSFODNN7EXAMPLE``) is reported, as the networks' test card numbers are: it is what people
check a DLP set-up with. A JWT's header
must decode to a JSON object with ``alg`` and its payload to a JSON object.

A PEM block runs from ``-----BEGIN ... PRIVATE KEY-----`` to its ``-----END`` line; line breaks may be
real or JSON-escaped (``\\n``, as in streamed tool-call arguments). A block whose end is missing (a
truncated answer) is reported up to the end of its key material.

A generic secret is the value of an assignment whose key names a secret (``password=``,
``"api_key": "..."``, ``client_secret:``, ``Authorization: Bearer ...``): at least
``secret_min_length`` characters, a digit or three character classes, enough entropy (scaled down
for short values, which cannot reach as many bits per character), and nothing that reads as a
placeholder, a variable or an expression (``changeme``, ``<your-key>``, ``${TOKEN}``, ``os.environ``).
The password of a URL (``postgres://app:S3cretPw!2024@db/app``) is one too.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterator

from gateway_core import Finding
from plugins.dlp.pii_patterns.entities import (
    ANTHROPIC_API_KEY,
    AWS_ACCESS_KEY,
    GENERIC_SECRET,
    GITHUB_TOKEN,
    GOOGLE_API_KEY,
    JWT,
    OPENAI_API_KEY,
    PRIVATE_KEY,
    SLACK_TOKEN,
    character_classes,
    entropy,
    glued_before,
)

#: The pattern of each prefix's key, how much of its start is the fixed prefix, and how many
#: character classes its random part mixes (lower case, upper case, digits; hex is two).
_KEYS: dict[str, tuple[str, re.Pattern[str], int, int]] = {
    "sk-ant-": (ANTHROPIC_API_KEY, re.compile(r"sk-ant-(?:[a-z]+\d\d-)?[A-Za-z0-9_-]{32,}"), 7, 3),
    "sk-": (OPENAI_API_KEY, re.compile(r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"), 3, 3),
    "AIza": (GOOGLE_API_KEY, re.compile(r"AIza[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"), 4, 3),
    "AKIA": (AWS_ACCESS_KEY, re.compile(r"A[KS]IA[A-Z0-9]{16}(?![A-Za-z0-9])"), 4, 2),
    "gh": (GITHUB_TOKEN, re.compile(r"gh[pousr]_[A-Za-z0-9]{36,251}(?![A-Za-z0-9])"), 4, 3),
    "github_pat_": (GITHUB_TOKEN, re.compile(r"github_pat_[A-Za-z0-9_]{40,244}(?![A-Za-z0-9])"), 11, 3),
    "xox": (SLACK_TOKEN, re.compile(r"xox[abprs]-(?:\d+-)*[A-Za-z0-9]{10,}(?:-[A-Za-z0-9]+)*"), 5, 2),
    "https://hooks.slack.com/": (
        SLACK_TOKEN,
        re.compile(r"https://hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{16,}"),
        33,
        2,
    ),
    "eyJ": (JWT, re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"), 0, 0),
}
#: For each string looked for: how far before it a prefix starts, the prefixes, and their family.
#: (Dashes are common in prose and code; ``sk-`` and ``xox`` are not.)
_PREFIX_ANCHORS: tuple[tuple[str, tuple[tuple[int, tuple[str, ...], str], ...]], ...] = (
    ("sk-", ((0, ("sk-",), "sk-"),)),
    ("xox", ((0, ("xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-"), "xox"),)),
    ("_", ((3, ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), "gh"), (6, ("github_pat_",), "github_pat_"))),
    ("J", ((2, ("eyJ",), "eyJ"),)),
)
#: Google's and AWS's prefixes.
_CAPITAL_PREFIXES = re.compile(r"A(?:Iza|[KS]IA)")
#: Words that show a value was written to be replaced.
_PLACEHOLDER_PARTS = (
    "xxxx", "****", "....", "your", "placeholder", "redacted", "dummy", "fake", "insert", "replace",
    "changeme", "change_me", "sample", "test",
)  # fmt: skip

_PEM = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----"
    r"((?:[A-Za-z0-9+/=:,. \t\r\n]|\\{1,3}[rnt/]|-(?!----))*+)"
    r"(-----END \1PRIVATE KEY-----)?"
)
_KEY_MATERIAL = re.compile(r"[A-Za-z0-9+/]{16,}")
_PEM_TRAILING_SPACE = re.compile(r"(?:\s|\\{1,3}[rnt])+\Z")
#: Fewest base64 characters of key material a PEM block must hold (placeholders hold ``...``).
MIN_KEY_MATERIAL = 64

#: Names ending an assignment's key that mark its value as a secret (matched lower case).
SECRET_KEYWORDS = (
    "password", "passwd", "passphrase", "pwd", "pass", "secret", "token", "key", "apikey",
    "accesskey", "secretkey", "privatekey", "authtoken", "accesstoken", "refreshtoken",
    "clientsecret", "auth", "authorization", "credential", "credentials",
)  # fmt: skip
#: An assignment's operator; the authorization scheme that may come before its value.
OPERATOR = r"[:=]=?>?[ \t]*"
_SCHEME = r"(?:(?i:bearer|basic|token)[ \t]+)?"
#: A quoted value ends at a quote or a space; a bare one also at punctuation (``&`` of a query string).
QUOTED_CHARS = r"[^\s\"'`\\]"
_BARE_CHARS = r"[^\s\"'`,;&\\<>(){}\[\]]"
#: Values that are names, not secrets: ``settings.SECRET_KEY``, ``ec.EllipticCurvePublicKey``,
#: ``customer_id``, ``tok_checkpoint_2``, ``TOKEN_FROM_ENV`` (a random token is none of these).
_NAME_PART = r"(?:_?[A-Za-z][a-z0-9_]*|_?[A-Z][A-Z0-9_]*|(?:[A-Z]+[a-z0-9]+)+[A-Z]*)"
_IDENTIFIER = re.compile(
    rf"{_NAME_PART}(?:\.{_NAME_PART})+|[a-z][a-z0-9]*(?:[_-][a-z0-9]+)+|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|_\w*"
)
_IDENTIFIER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_PLACEHOLDER_VALUES = frozenset({"password", "secret", "changeme", "none", "null", "undefined", "redacted"})
#: The password of a URL's user information: ``scheme://user:password@host``.
_URL_PASSWORD = re.compile(r"://[^\s:/@]{1,64}:([^\s/@]{1,128})@")
#: How far before its operator a key name may start.
KEY_WINDOW = 64


def compile_assignment(min_length: int) -> re.Pattern[str]:
    """The pattern of assignments whose value has at least ``min_length`` characters."""
    quoted = f"\\\\*[\"'`]{_SCHEME}({QUOTED_CHARS}{{{min_length},}})"
    bare = f"{_SCHEME}({_BARE_CHARS}{{{min_length},}})"
    return re.compile(f"{OPERATOR}(?:{quoted}|{bare})")


def find_keys(text: str, wanted: frozenset[str], min_entropy: float) -> Iterator[Finding]:
    """Vendor keys and tokens, and JWTs."""
    taken = 0
    for start, family in sorted(_key_candidates(text)):
        if start < taken or glued_before(text, start, "-"):
            continue
        if family == "sk-" and text.startswith("sk-ant-", start):
            family = "sk-ant-"
        entity_type, pattern, fixed, classes = _KEYS[family]
        if entity_type not in wanted:
            continue
        match = pattern.match(text, start)
        if match is None:
            continue
        value = match.group()
        if entity_type == JWT:
            if not _jwt_ok(value):
                continue
        elif not _random_ok(value[fixed:], min_entropy, classes):
            continue
        taken = match.end()
        yield Finding(entity_type, start, match.end())


def _key_candidates(text: str) -> Iterator[tuple[int, str]]:
    """Where a vendor prefix may start, and whose. Looking for its rarest character one at a time
    (``str.find`` is far quicker than a regular expression that can start with many letters)."""
    for char, offsets in _PREFIX_ANCHORS:
        index = text.find(char)
        while index != -1:
            for offset, prefixes, family in offsets:
                if index >= offset and text.startswith(prefixes, index - offset):
                    yield index - offset, family
            index = text.find(char, index + 1)
    for match in _CAPITAL_PREFIXES.finditer(text):  # a literal first letter: the scan is quick
        yield match.start(), "AIza" if match.group() == "AIza" else "AKIA"
    if "hooks.slack.com/" in text:
        index = text.find("https://hooks.slack.com/")
        while index != -1:
            yield index, "https://hooks.slack.com/"
            index = text.find("https://hooks.slack.com/", index + 1)


def find_private_keys(text: str) -> Iterator[Finding]:
    """PEM private key blocks, whole or cut short."""
    position = 0
    while (begin := text.find("-----BEGIN ", position)) != -1:
        match = _PEM.match(text, begin)
        position = begin + 11
        if match is None or sum(map(len, _KEY_MATERIAL.findall(match.group(2)))) < MIN_KEY_MATERIAL:
            continue
        end = match.end()
        if match.group(3) is None:
            trailing = _PEM_TRAILING_SPACE.search(match.group(2))
            if trailing is not None:
                end -= len(match.group(2)) - trailing.start()
        position = end
        yield Finding(PRIVATE_KEY, begin, end)


def find_assigned_secrets(
    text: str, assignment: re.Pattern[str], min_length: int, min_entropy: float
) -> Iterator[Finding]:
    """Values assigned to keys that name a secret (``password=...``)."""
    taken = 0  # operators inside a value already read (``a=b=c``) are not assignments of their own
    for operator in sorted(_positions(text, ":") + _positions(text, "=")):
        if operator < taken or _comparison(text, operator) or key_start(text, operator) is None:
            continue
        match = assignment.match(text, operator)
        if match is None:
            continue
        taken = match.end()
        if match.start(1) != -1:
            start, end = match.span(1)
        else:  # a bare value ends before the full stop of a sentence (":param token: Required.")
            start, end = match.start(2), match.start(2) + len(match.group(2).rstrip("."))
            if _expression(text, start, end, text[operator]):
                continue
        value = text[start:end]
        if end - start >= min_length and (
            secret_value_ok(value, min_entropy) or _basic_credentials(match, value)
        ):
            yield Finding(GENERIC_SECRET, start, end)


def _basic_credentials(match: re.Match[str], value: str) -> bool:
    """``Authorization: Basic dXNlcjpwYXNz``: base64 of ``user:password``, whatever it looks like."""
    if "basic" not in match.group().lower():
        return False
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, ValueError):
        return False
    return ":" in decoded and decoded.isprintable()


def _comparison(text: str, operator: int) -> bool:
    """``token == other``, ``key != x``, ``a <= b``: not assignments."""
    after = text[operator + 1 : operator + 2]
    before = text[operator - 1 : operator] if operator > 0 else ""
    return (text[operator] == "=" and after == "=") or before in ("=", "!", "<", ">")


def _expression(text: str, start: int, end: int, operator: str) -> bool:
    """A name used in code: a call (``token = b64encode(...)``) or a type annotation
    (``key: _KeyType) ->``, ``private_key: Ed25519PrivateKey | None``)."""
    if _IDENTIFIER_NAME.fullmatch(text, start, end) is None:
        return False
    rest = text[end : end + 4].lstrip(" ")
    if rest[:1] == "(":
        return True
    return operator == ":" and (rest[:1] in (",", ")", "]", "|", "=") or rest.startswith("->"))


def find_url_passwords(text: str, min_length: int, min_entropy: float) -> Iterator[Finding]:
    """Passwords in URLs (``postgres://app:S3cretPw!2024@db.internal/app``)."""
    if "://" not in text:
        return
    for match in _URL_PASSWORD.finditer(text):
        start, end = match.span(1)
        if end - start >= min_length and secret_value_ok(match.group(1), min_entropy):
            yield Finding(GENERIC_SECRET, start, end)


def key_start(text: str, operator: int) -> int | None:
    """Where the key that ends just before ``text[operator]`` starts, if it names a secret."""
    window = max(0, operator - KEY_WINDOW)
    head = text[window:operator].rstrip(" \t")
    if head[-1:] in ("'", '"', "`"):
        head = head[:-1].rstrip("\\")
    lowered = head.lower()
    if not lowered.endswith(SECRET_KEYWORDS):
        return None
    for keyword in SECRET_KEYWORDS:
        if lowered.endswith(keyword):
            begin = len(head) - len(keyword)
            before = head[begin - 1] if begin > 0 else " "
            escaped = before in "ntr" and head[begin - 2 : begin - 1] == "\\"  # "\\npassword: ..."
            # api_key, --password, "token"; camelCase: accessToken.
            if not before.isalnum() or escaped or (before.islower() and head[begin].isupper()):
                return window + begin
    return None


def _positions(text: str, char: str) -> list[int]:
    found = []
    index = text.find(char)
    while index != -1:
        found.append(index)
        index = text.find(char, index + 1)
    return found


def secret_value_ok(value: str, min_entropy: float) -> bool:
    """Whether an assigned value reads as a real secret rather than a placeholder or an expression."""
    lowered = value.lower()
    if (
        lowered in _PLACEHOLDER_VALUES
        or any(part in lowered for part in _PLACEHOLDER_PARTS)
        or "example" in lowered
        or value[0] in "$%*#@<{["
        or lowered.startswith(("http://", "https://"))
        or _IDENTIFIER.fullmatch(value)
    ):
        return False
    classes = character_classes(value)
    if classes < 2 or (classes < 3 and not any(char.isdigit() for char in value)):
        return False
    # n characters hold at most log2(n) bits each: short values are held to a lower bar.
    return entropy(value) >= min_entropy * min(1.0, math.log2(len(value)) / 4)


def _random_ok(body: str, min_entropy: float, classes: int) -> bool:
    lowered = body.lower()
    if any(part in lowered for part in _PLACEHOLDER_PARTS):
        return False
    return character_classes(body) >= classes and entropy(body) >= min_entropy


def _jwt_ok(value: str) -> bool:
    header, payload, _ = value.split(".", 2)
    return "alg" in _json_object(header) and bool(_json_object(payload) or payload == "e30")


def _json_object(part: str) -> dict[str, object]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError):
        return {}
    return decoded if isinstance(decoded, dict) else {}
