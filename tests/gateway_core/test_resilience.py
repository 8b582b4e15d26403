"""Which failures are retried, the waits between attempts, and each group's policy."""

from __future__ import annotations

import random

import pytest

from gateway_core import ConfigError, GatewayError, parse_config
from gateway_core.config import RetryConfig
from gateway_core.gateway import Gateway
from gateway_core.http import error_from_exception, error_from_upstream
from gateway_core.resilience import Failure, GroupPolicy, Policies, classify, retry_after_seconds


def upstream(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> GatewayError:
    error = error_from_upstream(status, body, headers or {}, "openai")
    error.upstream_status = status
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (upstream(500), Failure.SERVER_ERROR),
        (upstream(503), Failure.SERVER_ERROR),
        (upstream(529), Failure.SERVER_ERROR),
        (upstream(429), Failure.RATE_LIMITED),
        (upstream(401), Failure.AUTH),
        (upstream(504), Failure.TIMEOUT),
        (upstream(400, b'{"error": {"message": "bad temperature", "code": "invalid_value"}}'), None),
        (upstream(404), None),
        (
            upstream(400, b'{"error": {"message": "too long", "code": "context_length_exceeded"}}'),
            Failure.CONTEXT_WINDOW,
        ),
        (
            upstream(
                400,
                b'{"type": "error", "error": {"message": "prompt is too long: 210000 tokens > 200000 maximum"}}',
            ),
            Failure.CONTEXT_WINDOW,
        ),
        (error_from_exception(TimeoutError(), "openai"), Failure.TIMEOUT),
        (error_from_exception(ConnectionResetError(), "openai"), Failure.CONNECTION),
        (
            GatewayError(502, "malformed JSON", type="server_error", code="upstream_error"),
            Failure.SERVER_ERROR,
        ),
        (GatewayError(400, "unknown field", code="unsupported_parameter"), None),
    ],
)
def test_classify(error: GatewayError, expected: Failure | None) -> None:
    assert classify(error) == expected


def test_retry_after_prefers_milliseconds() -> None:
    assert retry_after_seconds(upstream(429, headers={"retry-after-ms": "250", "retry-after": "1"})) == 0.25
    assert retry_after_seconds(upstream(429, headers={"retry-after": "7"})) == 7
    past = upstream(429, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after_seconds(past) == 0  # an HTTP date already gone by
    assert retry_after_seconds(upstream(429, headers={"retry-after": "soon"})) is None
    assert retry_after_seconds(upstream(429)) is None


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    policy = GroupPolicy(RetryConfig(backoff=0.5, max_backoff=3, jitter=0.5))
    rng = random.Random(7)
    for number, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (8, 3.0)]:
        waits = [policy.backoff(number, rng) for _ in range(200)]
        assert ceiling / 2 <= min(waits) and max(waits) <= ceiling
        assert max(waits) - min(waits) > ceiling / 4  # actually random


def test_which_failures_a_policy_retries() -> None:
    policy = GroupPolicy(RetryConfig(on_status=[500], on_timeout=False))
    assert policy.retries(Failure.SERVER_ERROR, 500)
    assert not policy.retries(Failure.SERVER_ERROR, 503)
    assert not policy.retries(Failure.TIMEOUT, None)
    assert policy.retries(Failure.CONNECTION, None)
    assert policy.retries(Failure.AUTH, 401)
    assert not policy.retries(Failure.CONTEXT_WINDOW, 400)


def test_group_settings_override_the_defaults() -> None:
    config = parse_config(
        {
            "resilience": {
                "retry": {"attempts": 5},
                "deadline": 30,
                "fallbacks": {"gpt-*": ["mock"], "mock": []},
                "context_window_fallbacks": {"gpt-4o-mini": ["big"]},
            },
            "models": {
                "gpt-4o-mini": {"deployments": [{"provider": "mock"}]},
                "gpt-own": {
                    "deployments": [{"provider": "mock"}],
                    "retry": {"attempts": 1},
                    "fallbacks": ["big"],
                    "deadline": 5,
                },
                "mock": {"deployments": [{"provider": "mock"}]},
                "big": {"deployments": [{"provider": "mock"}]},
            },
        }
    )
    policies = Policies(config)
    mini = policies.for_group("gpt-4o-mini")
    assert (mini.retry.attempts, mini.deadline, mini.fallbacks) == (5, 30, ("mock",))
    assert mini.context_window_fallbacks == ("big",)
    own = policies.for_group("gpt-own")
    assert (own.retry.attempts, own.deadline, own.fallbacks) == (1, 5, ("big",))
    assert policies.for_group("gpt-from-the-database").fallbacks == ("mock",)
    assert policies.for_group("other").fallbacks == ()


def test_a_fallback_to_an_unknown_model_stops_start_up() -> None:
    config = parse_config({"models": {"a": {"deployments": [{"provider": "mock"}], "fallbacks": ["typo"]}}})
    with pytest.raises(ConfigError, match="typo"):
        Gateway(config)
