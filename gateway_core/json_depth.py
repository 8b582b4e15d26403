"""How deeply a request's JSON may nest (``server.max_json_depth``).

orjson reads 1,024 levels but writes only 254, and the gateway writes every body it translates or
rewrites: a body nested deeper than that would fail on its way upstream. Bodies are therefore
refused at parse time, with a 400 naming the limit, once they nest deeper than the configured limit
(at most :data:`HIGHEST_MAX_DEPTH`, which leaves room for the levels a translation adds).

The check costs one orjson encode and no Python-level walk: the parsed body is encoded at the bottom
of a chain of ``254 - limit`` one-item lists, so orjson's own recursion limit trips exactly when the
body nests deeper than ``limit``. The chains are built once per thread and limit. Small bodies are
first screened by counting their brackets, which costs less than walking the chain.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson

from gateway_core.errors import bad_request

#: The deepest nesting orjson encodes.
ENCODER_DEPTH = 254
#: The default of ``server.max_json_depth``: JSON-schema tools nest some 20 to 30 levels.
DEFAULT_MAX_DEPTH = 64
#: The highest limit the configuration accepts.
HIGHEST_MAX_DEPTH = 128


#: Bodies up to this many bytes are screened by counting their brackets before they are encoded.
SCREENED_SIZE = 2048


class _Chains(threading.local):
    def __init__(self) -> None:
        #: limit → (outermost list, innermost list) of a chain of ``ENCODER_DEPTH - limit`` lists.
        self.by_limit: dict[int, tuple[list[Any], list[Any]]] = {}


_chains = _Chains()


def _chain(limit: int) -> tuple[list[Any], list[Any]]:
    chain = _chains.by_limit.get(limit)
    if chain is None:
        inner: list[Any] = []
        outer = inner
        for _ in range(ENCODER_DEPTH - limit - 1):
            outer = [outer]
        chain = _chains.by_limit[limit] = (outer, inner)
    return chain


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) has more than ``limit`` levels of arrays and objects."""
    if not 1 <= limit <= HIGHEST_MAX_DEPTH:
        raise ValueError(f"a JSON depth limit must be between 1 and {HIGHEST_MAX_DEPTH}")
    outer, inner = _chain(limit)
    inner.append(value)
    try:
        orjson.dumps(outer)
    except orjson.JSONEncodeError:
        return True  # parsed JSON always encodes, but for its depth
    finally:
        inner.clear()
    return False


def json_too_deep(raw: bytes, value: Any, limit: int) -> bool:
    """Whether ``value``, parsed from ``raw``, nests deeper than ``limit`` levels."""
    if len(raw) <= 2 * limit:
        return False  # too short to hold that many brackets
    if len(raw) <= SCREENED_SIZE and raw.count(b"{") + raw.count(b"[") <= limit:
        return False  # too few brackets (counting those in strings, too)
    return nests_deeper_than(value, limit)


def loads_embedded(text: str | bytes, where: str) -> Any:
    """Parse JSON a request carries inside a string (a tool call's ``arguments``).

    Raises ``orjson.JSONDecodeError`` when it is not JSON, and a 400 naming ``where`` when it nests
    deeper than :data:`HIGHEST_MAX_DEPTH` levels (the body around it is already checked; the value
    is then written into a body of another dialect).
    """
    value = orjson.loads(text)
    raw = text.encode() if isinstance(text, str) else text
    if json_too_deep(raw, value, HIGHEST_MAX_DEPTH):
        raise bad_request(
            f"`{where}` nests JSON deeper than the limit of {HIGHEST_MAX_DEPTH} levels.",
            param=where,
            code="json_too_deep",
        )
    return value
