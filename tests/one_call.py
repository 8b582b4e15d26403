"""Settings for gateways that test how one upstream answer is mapped for the client.

One call per request (no retries) and circuit breakers, outlier ejection and 429 cool-downs that never
take a deployment out, so a fault one test injects cannot change what the next test sees.
"""

from __future__ import annotations

from typing import Any

ONE_CALL: dict[str, Any] = {
    "resilience": {"retry": {"attempts": 1}},
    "health": {
        "breaker": {"failures": 1_000_000, "min_requests": 1_000_000},
        "outlier": {"enabled": False},
        "max_retry_after": 0.001,
    },
}


def one_call(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with :data:`ONE_CALL` added (its own ``resilience`` and ``health`` keys win)."""
    return {**ONE_CALL, **config}
