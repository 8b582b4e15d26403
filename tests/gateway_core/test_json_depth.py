"""The JSON depth check: exact at the limit, whatever the size of the body and what its strings hold."""

from __future__ import annotations

import orjson
import pytest

from gateway_core.json_depth import HIGHEST_MAX_DEPTH, SCREENED_SIZE, json_too_deep, nests_deeper_than


def nested(levels: int, padding: str = "") -> bytes:
    """Objects and arrays in turn, ``levels`` deep, with ``padding`` text at the bottom."""
    text = orjson.dumps(padding)
    for level in range(levels):
        text = b'{"a":' + text + b"}" if level % 2 else b"[" + text + b"]"
    return text


@pytest.mark.parametrize("limit", [1, 8, 64, HIGHEST_MAX_DEPTH])
@pytest.mark.parametrize("padding", ["", "x" * SCREENED_SIZE, "[[[{{{" * 40])
def test_the_limit_is_exact(limit: int, padding: str) -> None:
    for levels, deeper in ((limit - 1, False), (limit, False), (limit + 1, True), (limit + 200, True)):
        raw = nested(levels, padding)
        assert json_too_deep(raw, orjson.loads(raw), limit) is deeper, (levels, len(raw))
        assert nests_deeper_than(orjson.loads(raw), limit) is deeper


def test_many_shallow_containers_are_not_deep() -> None:
    raw = orjson.dumps({"tools": [{"function": {"parameters": {"type": "object"}}} for _ in range(200)]})
    assert raw.count(b"{") > 64
    assert not json_too_deep(raw, orjson.loads(raw), 64)


@pytest.mark.parametrize("limit", [0, HIGHEST_MAX_DEPTH + 1])
def test_limits_the_encoder_cannot_check_are_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="between 1 and"):
        nests_deeper_than({}, limit)
