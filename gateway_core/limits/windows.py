"""Windows, verdicts and the arithmetic both counter backends share.

A :class:`Window` limits one counter of a scope. Two kinds:

* **Rolling** (``seconds`` is a number): a rate, enforced with GCRA (the generic cell rate algorithm,
  a leaky bucket kept as one timestamp). A limit of N per S seconds admits N at once, then one more
  every S/N seconds as the bucket drains, like OpenAI's limits, which replenish continuously. The
  state is the *theoretical arrival time* ``tat``: the moment the bucket is empty again. A take of
  ``amount`` is admitted when ``max(tat, now) + amount·S/N - now <= S``; the refusal boundary is
  exact, so a limit is never exceeded by more than float rounding, and ``retry_after`` is the exact
  moment the take would pass.
* **Calendar** (``seconds`` is a :class:`Period`): a plain counter per UTC day, per UTC month or for
  all time, for quotas and budgets. A take is admitted when ``used + amount <= limit``.

A window that is full admits nothing, not even an amount of zero (a budget that is spent refuses a
request whose cost cannot be estimated). All amounts are integers: requests, tokens, micro-dollars.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

#: Slack for float rounding in GCRA comparisons, in seconds.
EPSILON = 1e-6

Backend = Literal["memory", "redis"]


class Period(StrEnum):
    """A calendar period of a quota or budget, in UTC."""

    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


@dataclass(frozen=True, slots=True)
class Window:
    """One limit on one counter: at most ``limit`` per ``seconds`` (rolling) or per calendar period.

    ``name`` identifies the counter within its scope (``"requests"``, ``"tokens:day"``); ``amount``
    is what a take adds.
    """

    name: str
    limit: int
    seconds: float | Period
    amount: int = 1
    #: A calendar counter that a store which lost it (or never had it) does not start from zero: a
    #: take answers ``unseeded`` until the owner seeds it (budgets rebuild it from the usage records).
    durable: bool = False

    def __post_init__(self) -> None:
        if self.limit < 0 or self.amount < 0:
            raise ValueError(f"window {self.name!r}: limit and amount must not be negative")
        if not isinstance(self.seconds, Period) and self.seconds <= 0:
            raise ValueError(f"window {self.name!r}: seconds must be positive")

    @property
    def rolling(self) -> bool:
        return not isinstance(self.seconds, Period)

    @property
    def period(self) -> Period | None:
        return self.seconds if isinstance(self.seconds, Period) else None

    def fits(self) -> bool:
        """Whether ``amount`` can ever pass (an amount above the limit never does)."""
        return self.amount <= self.limit and self.limit > 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to a take on one scope.

    ``remaining``, ``used`` and ``reset`` (seconds until the counter is back to zero; ``None`` for a
    total) are per window name, after the take when it was allowed. ``retry_after`` is set on a
    refusal: seconds until the same take would pass, ``None`` when waiting cannot help (the amount
    exceeds the limit, or a total is spent).
    """

    allowed: bool
    scope: str
    windows: tuple[Window, ...]
    refused: Window | None = None
    remaining: Mapping[str, int] = field(default_factory=dict)
    used: Mapping[str, int] = field(default_factory=dict)
    reset: Mapping[str, float | None] = field(default_factory=dict)
    retry_after: float | None = None
    #: Clock time of the take: adjustments of calendar windows go to the period it fell in.
    at: float = 0.0
    #: Where the counters live (``memory`` also while Redis is down and limits fail open).
    backend: Backend = "memory"
    #: Refused because the store does not know the count of the ``refused`` durable window yet:
    #: nothing was taken; seed it (:meth:`~gateway_core.limits.Counters.seed`) and take again.
    unseeded: bool = False


# --- calendar periods ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CalendarPeriod:
    """One UTC day or month: its id (``2026-05-31``, ``2026-05``), bounds, and its neighbours'."""

    id: str
    start: float
    end: float
    previous_id: str
    #: When the period after this one ends.
    next_end: float


#: The last period found per kind, so most calls skip the date arithmetic.
_last_period: dict[Period, CalendarPeriod] = {}


def calendar_period(period: Period, now: float) -> CalendarPeriod | None:
    """The day or month ``now`` falls in (None for the total)."""
    if period is Period.TOTAL:
        return None
    last = _last_period.get(period)
    if last is not None and last.start <= now < last.end:
        return last
    period_id, start, end = _calendar(period, now)
    found = CalendarPeriod(period_id, start, end, _calendar(period, start - 1)[0], _calendar(period, end)[2])
    _last_period[period] = found
    return found


def period_bounds(period: Period, now: float) -> tuple[str, float | None]:
    """The id of the period ``now`` falls in (``2026-05-31``, ``2026-05``, ``total``) and its end."""
    found = calendar_period(period, now)
    return ("total", None) if found is None else (found.id, found.end)


def _calendar(period: Period, now: float) -> tuple[str, float, float]:
    """The id, start and end of the day or month ``now`` falls in."""
    moment = datetime.fromtimestamp(now, UTC)
    if period is Period.DAY:
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        period_id, end = start.strftime("%Y-%m-%d"), (start + timedelta(days=1)).timestamp()
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        period_id, end = start.strftime("%Y-%m"), following.timestamp()
    return period_id, start.timestamp(), end


# --- the decision, shared by the memory backend and mirrored by the Lua scripts --------------------


def interval(window: Window) -> float:
    """Seconds one unit occupies in a rolling window (GCRA's emission interval)."""
    assert isinstance(window.seconds, float | int)
    return float(window.seconds) / window.limit


def admits(window: Window, state: float, now: float) -> bool:
    """Whether ``window`` admits its amount given its state (``tat`` or the count used)."""
    if window.limit <= 0:
        return False
    if window.rolling:
        assert isinstance(window.seconds, float | int)
        tat = max(state, now)
        after = tat + window.amount * interval(window)
        if after - now > window.seconds + EPSILON:
            return False
        return window.amount > 0 or tat - now < window.seconds - EPSILON
    if state + window.amount > window.limit:
        return False
    return window.amount > 0 or state < window.limit


def after_take(window: Window, state: float, now: float) -> float:
    """The state of ``window`` after admitting its amount."""
    if window.rolling:
        return max(state, now) + window.amount * interval(window)
    return state + window.amount


def after_adjust(window: Window, state: float, now: float, delta: int) -> float:
    """The state after adding ``delta`` (negative: giving back), never refused, never below empty."""
    if window.rolling:
        if window.limit <= 0:
            return state
        return max(max(state, now) + delta * interval(window), now)
    return max(state + delta, 0)


def verdict_of(
    scope: str,
    windows: Sequence[Window],
    states: Sequence[float],
    refused_index: int | None,
    now: float,
    backend: Backend,
    unseeded: bool = False,
) -> Verdict:
    """Build the verdict from each window's state (after the take, or as found on a refusal)."""
    remaining: dict[str, int] = {}
    used: dict[str, int] = {}
    reset: dict[str, float | None] = {}
    for window, state in zip(windows, states, strict=True):
        if window.rolling:
            busy = max(state - now, 0.0)
            units = math.ceil(busy / interval(window) - 1e-9) if window.limit > 0 else 0
            used[window.name] = min(units, window.limit)
            reset[window.name] = busy
        else:
            used[window.name] = int(state)
            period = window.period
            assert period is not None
            _, ends = period_bounds(period, now)
            reset[window.name] = None if ends is None else max(ends - now, 0.0)
        remaining[window.name] = max(window.limit - used[window.name], 0)
    if refused_index is None:
        return Verdict(True, scope, tuple(windows), None, remaining, used, reset, None, now, backend)
    refused = windows[refused_index]
    state = states[refused_index]
    retry_after: float | None = None
    if refused.fits():
        if refused.rolling:
            assert isinstance(refused.seconds, float | int)
            after = max(state, now) + refused.amount * interval(refused)
            retry_after = max(after - refused.seconds - now, 0.0)
        else:
            retry_after = reset[refused.name]
    return Verdict(
        False, scope, tuple(windows), refused, remaining, used, reset, retry_after, now, backend, unseeded
    )


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's ``x-ratelimit-reset-*`` headers write it: ``20ms``, ``1.5s``,
    ``6m0s``, ``2h3m0s``; days as hours."""
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    if seconds < 60:
        text = f"{seconds:.3f}".rstrip("0").rstrip(".")
        return f"{text}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"
