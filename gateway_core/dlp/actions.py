"""What happens to a value a filter found: the actions, applied to one text.

* ``redact``: a readable placeholder, ``[EMAIL_ADDRESS]``;
* ``mask``: every character but the last four replaced by ``*``;
* ``hash``: ``[EMAIL_ADDRESS_3f9a1c2b04de7a55]``, a keyed digest that is the same for the same value
  within one organization (so answers and logs can still be correlated) and differs across them;
* ``pseudonymize``: ``[EMAIL_ADDRESS_1]``, numbered per request; the answer gets the original values
  back (see :class:`Pseudonyms`);
* ``block``: the request (or the answer) is refused, naming the types found, never the values;
* ``log``: counted, nothing changed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gateway_core.dlp.filter import Finding
from gateway_core.dlp.policy import ACTIONS, Action

_STRENGTH = {action: rank for rank, action in enumerate(ACTIONS)}


class Blocked(Exception):
    """A text holds values whose action is ``block``; ``types`` names them."""

    def __init__(self, types: Iterable[str]) -> None:
        self.types = sorted(set(types))
        super().__init__(", ".join(self.types))


@dataclass(slots=True)
class Pseudonyms:
    """The placeholders of one request and the values they stand for."""

    values: dict[str, str] = field(default_factory=dict)
    _by_value: dict[tuple[str, str], str] = field(default_factory=dict)
    _numbers: dict[str, int] = field(default_factory=dict)
    _pattern: re.Pattern[str] | None = None

    def placeholder(self, entity_type: str, value: str, *, restore: bool = True) -> str:
        """The placeholder of ``value``; restored in answers when ``restore`` (a value the client
        sent). A value found in the answer itself gets a placeholder that stays in the answer."""
        known = self._by_value.get((entity_type, value))
        if known is not None:
            return known
        number = self._numbers.get(entity_type, 0) + 1
        self._numbers[entity_type] = number
        token = f"[{entity_type}_{number}]"
        self._by_value[(entity_type, value)] = token
        if restore:
            self.values[token] = value
            self._pattern = None
        return token

    def __bool__(self) -> bool:
        return bool(self.values)

    def restore(self, text: str, *, json: bool = False) -> str:
        """``text`` with every placeholder replaced by its value (JSON-escaped when ``json``: the
        text is a piece of a JSON document, such as streamed tool-call arguments)."""
        if not self.values or "[" not in text:
            return text
        pattern = self._pattern
        if pattern is None:
            pattern = self._pattern = re.compile("|".join(re.escape(token) for token in self.values))
        if json:
            return pattern.sub(lambda m: _json_escape(self.values[m.group(0)]), text)
        return pattern.sub(lambda m: self.values[m.group(0)], text)

    def holdback(self, text: str) -> int:
        """Where an unfinished placeholder at the end of ``text`` starts (``len(text)`` if none)."""
        start = text.rfind("[", max(0, len(text) - 64))
        if start < 0 or "]" in text[start:]:
            return len(text)
        tail = text[start:]
        if any(token.startswith(tail) for token in self.values):
            return start
        return len(text)


def _json_escape(value: str) -> str:
    import orjson

    return orjson.dumps(value).decode()[1:-1]


def strongest(actions: Iterable[Action]) -> Action:
    return min(actions, key=_STRENGTH.__getitem__)


def choose(findings: Iterable[Finding], action_of: Callable[[str], Action]) -> list[Finding]:
    """Findings that do not overlap, sorted by position: of overlapping ones the longest is kept
    (the one with the stronger action when they are as long)."""
    ranked = sorted(
        findings,
        key=lambda f: (f.start - f.end, _STRENGTH[action_of(f.entity_type)], f.start),
    )
    kept: list[Finding] = []
    for finding in ranked:
        if finding.end <= finding.start:
            continue
        if all(finding.end <= other.start or finding.start >= other.end for other in kept):
            kept.append(finding)
    kept.sort(key=lambda f: f.start)
    return kept


@dataclass(slots=True)
class Rewriter:
    """Applies the actions of one request's policy to its texts and counts what it found."""

    #: Action per entity type (types not listed take ``default``).
    actions: Mapping[str, Action]
    default: Action
    #: The key of the ``hash`` action for the request's organization (None: hashing unavailable).
    hash_key: bytes | None
    pseudonyms: Pseudonyms
    #: Counts by (entity type, direction, action), shared with the request's context.
    counts: dict[tuple[str, str, str], int]

    def action_of(self, entity_type: str) -> Action:
        return self.actions.get(entity_type, self.default)

    def apply(self, text: str, findings: list[Finding], direction: str) -> str:
        """``text`` with the actions applied to ``findings`` (already chosen: sorted, no overlaps).

        Raises :class:`Blocked` when one of them is to be blocked (after counting them all).
        """
        if not findings:
            return text
        out: list[str] = []
        position = 0
        blocked: list[str] = []
        counts = self.counts
        for finding in findings:
            entity_type = finding.entity_type
            action = self.action_of(entity_type)
            if action == "off":
                continue
            key = (entity_type, direction, action)
            counts[key] = counts.get(key, 0) + 1
            if action == "log":
                continue
            if action == "block":
                blocked.append(entity_type)
                continue
            value = text[finding.start : finding.end]
            out.append(text[position : finding.start])
            out.append(self._replacement(entity_type, value, action, direction))
            position = finding.end
        if blocked:
            raise Blocked(blocked)
        if position == 0:
            return text
        out.append(text[position:])
        return "".join(out)

    def rewrites(self, types: Iterable[str]) -> bool:
        """Whether any of ``types`` has an action that changes the text."""
        return any(self.action_of(t) not in ("log", "off") for t in types)

    def _replacement(self, entity_type: str, value: str, action: Action, direction: str) -> str:
        if action == "redact":
            return f"[{entity_type}]"
        if action == "mask":
            keep = value[-4:] if len(value) > 4 else ""
            return "*" * (len(value) - len(keep)) + keep
        if action == "hash":
            if self.hash_key is None:  # checked when the policy is made; never a silent pass
                raise RuntimeError("the hash action has no key")
            digest = hmac.new(self.hash_key, f"{entity_type}\0{value}".encode(), hashlib.sha256)
            return f"[{entity_type}_{digest.hexdigest()[:16]}]"
        return self.pseudonyms.placeholder(entity_type, value, restore=direction == "request")


def org_hash_key(master: bytes, org_id: str | None) -> bytes:
    """The key of the ``hash`` action for one organization (requests without one share a key)."""
    return hmac.new(master, b"lockgate-dlp-org\0" + (org_id or "").encode(), hashlib.sha256).digest()
