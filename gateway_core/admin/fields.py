"""Field types of the admin API's bodies and queries that accept exactly what the OpenAPI document says.

- :data:`Amount`, :data:`PositiveAmount`: a decimal amount (USD), as a JSON number (rounded to 8 decimals) or as a plain decimal
  string (``"0.15"``, exact); ``1e3``, ``"+1"`` or ``" 1"`` are refused.
- :data:`Timestamp`: an ISO 8601 date-time string (UTC when it names no zone), never a number.
- :data:`WHOLE`: put last in an ``int``'s ``Annotated``: a number with no fraction (``3.0``) is an
  integer too, as JSON Schema says.
- :data:`JsonObject`: a free-form object; integers beyond 64 bits become floats, as orjson reads them.
- :data:`NONBLANK`: the pattern of a name that must not be blank once trimmed.
- :func:`keep`: a field of an update body that may be left out (keeping its value) but not set to ``null``.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

#: Largest amount (exclusive) and number of decimals the database keeps for prices and balances.
AMOUNT_LIMIT = Decimal("1e10")
AMOUNT_PLACES = 8
_QUANTUM = Decimal(1).scaleb(-AMOUNT_PLACES)
_DIGITS = r"(0|[1-9][0-9]{0,9})(\.[0-9]{1,8})?"
# A positive amount: a non-zero whole part, or "0." and at least one non-zero decimal among the eight.
_POSITIVE = (
    r"[1-9][0-9]{0,9}(\.[0-9]{1,8})?|0\.("
    + "|".join("0" * zeros + f"[1-9][0-9]{{0,{7 - zeros}}}" for zeros in range(AMOUNT_PLACES))
    + ")"
)

_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:?\d{2})?", re.ASCII
)


#: Some character that trimming keeps: the whitespace pydantic's ``strip_whitespace`` removes is spelt
#: out, since JSON Schema's ``\\s`` differs from it (``\\ufeff`` is one, ``\\x85`` is not), and so are
#: the separators ``\\x1c``-``\\x1f``, which the store's ``str.strip()`` removes too (a name of only
#: those would be stored empty).
NONBLANK = r"[^\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def _json_numbers(value: Any) -> Any:
    """A JSON value with its integers beyond 64 bits as floats: what JSON columns store, and how the
    gateway's JSON parser (orjson) reads such numbers anyway."""
    if isinstance(value, dict):
        return {key: _json_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_numbers(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return float(value)
    return value


#: A free-form JSON object, stored as it is (integers beyond 64 bits become floats).
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_numbers)]


class _AmountRule:
    """What an amount accepts: a bounded JSON number or a plain decimal string."""

    def __init__(self, *, positive: bool) -> None:
        self.positive = positive
        self.text = re.compile(_POSITIVE if positive else _DIGITS, re.ASCII)
        self.low = float(_QUANTUM) if positive else 0.0
        number = {"type": "number", "minimum": self.low, "exclusiveMaximum": float(AMOUNT_LIMIT)}
        self.schema: dict[str, Any] = {
            "anyOf": [number, {"type": "string", "pattern": f"^({self.text.pattern})$"}],
            "description": "a JSON number (rounded to 8 decimals) or a decimal string (exact)",
        }

    def parse(self, value: Any) -> Any:
        if isinstance(value, str):
            if not self.text.fullmatch(value):
                above = ", above 0" if self.positive else ""
                raise ValueError(
                    f'a plain decimal string such as "0.15" (up to 10 digits, 8 decimals{above})'
                )
            return Decimal(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value) or not self.low <= value < AMOUNT_LIMIT:
                raise ValueError(f"must be at least {self.low:g} and below 10^10")
            exact = Decimal(repr(value))
            return exact.quantize(_QUANTUM) if int(exact.as_tuple().exponent) < -AMOUNT_PLACES else exact
        raise ValueError("must be a number or a decimal string")


_ANY = _AmountRule(positive=False)
_ABOVE_ZERO = _AmountRule(positive=True)
#: A decimal amount (USD) from 0 up to 10^10 (exclusive), at most 8 decimals.
Amount = Annotated[Decimal, BeforeValidator(_ANY.parse), WithJsonSchema(_ANY.schema)]
#: An :data:`Amount` above 0.
PositiveAmount = Annotated[Decimal, BeforeValidator(_ABOVE_ZERO.parse), WithJsonSchema(_ABOVE_ZERO.schema)]


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer may be written ``3`` or ``3.0`` (JSON Schema's ``integer``); ``3.5``, ``"3"`` or ``true`` are
#: refused. Last in the ``Annotated``, after the bounds, so the document keeps ``minimum``/``maximum``.
WHOLE = BeforeValidator(_whole)


def _date_time(value: Any) -> Any:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and _DATE_TIME.fullmatch(value):
        try:
            moment = datetime.fromisoformat(value.upper())
        except ValueError:
            raise ValueError("not a valid date-time") from None
    else:
        raise ValueError("must be an ISO 8601 date-time string such as 2026-01-31T12:00:00Z")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # within a few hours of year 1 or 9999: the nearest representable moment
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


#: A date-time as an ISO 8601 string, in UTC (UTC when it names no zone).
Timestamp = Annotated[
    datetime,
    BeforeValidator(_date_time),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def keep(description: str | None = None, **constraints: Any) -> Any:
    """A field of an update body that may be left out (keeping its value) but not set to ``null``.

    Annotate it with its type without ``None``: a field left out is ``None`` (and not in
    ``model_fields_set``), an explicit ``null`` is a 400 naming it, and the document shows neither
    ``null`` nor a default (a factory's value is not part of the schema).
    """
    return Field(default_factory=_left_out, description=description, **constraints)


def _left_out() -> None:
    return None
