"""Waiting for what a test expects to happen, with a deadline instead of a fixed sleep.

A loaded machine only makes these waits longer, never wrong: the check runs until it holds or the
deadline passes, and then it fails saying what did not happen. A check that nothing happens ("no second
copy arrives") needs a barrier instead: something that must come after it, waited for with these.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

#: How often a condition is checked.
STEP = 0.02


def eventually(condition: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
    """Return once ``condition()`` holds; fail when it still does not after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not come true within {timeout} s")
        time.sleep(STEP)


async def eventually_async(
    condition: Callable[[], bool], timeout: float = 5.0, what: str = "the condition"
) -> None:
    """:func:`eventually` for a test running in an event loop: the loop goes on meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not come true within {timeout} s")
        await asyncio.sleep(STEP)
