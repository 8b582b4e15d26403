"""The Hypothesis profiles of the test run (``tests/conftest.py`` loads one).

Property-based and fuzz tests (hypothesis, schemathesis) explore new inputs on every local run and
remember what failed in ``.hypothesis/``. In CI they run on a fixed seed, without an example database
or time limit: CI fails only for a regression, and prints how to reproduce what it found.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import settings

CI = "ci"
settings.register_profile(CI, derandomize=True, database=None, deadline=None, print_blob=True)


def selected(environ: Mapping[str, str]) -> str:
    """``HYPOTHESIS_PROFILE`` when set, else ``ci`` when ``CI`` is set to something true, else ``default``."""
    if environ.get("HYPOTHESIS_PROFILE"):
        return environ["HYPOTHESIS_PROFILE"]
    return CI if environ.get("CI", "").lower() not in ("", "0", "false", "no") else "default"
