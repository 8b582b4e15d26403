"""Deployment health: the circuit breaker, 429 cool-downs, outlier ejection, active checks, sharing.

The state machine runs on an injected clock. Active checks run against the fake OpenAI upstream,
and two gateways share a breaker through the real Redis of ``LOCKGATE_TEST_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest

from gateway_core import Gateway, GatewayError, Provider, ProviderCall, hookimpl, parse_config
from gateway_core.errors import upstream_error
from gateway_core.health import HealthTracker, state_key, upstream_failure
from gateway_core.routing import Deployment
from gateway_core.store import kv
from gateway_core.testing import free_port
from tests.fakes import FakeOpenAI

REDIS_ENV = "LOCKGATE_TEST_REDIS_URL"


class FakeClock:
    """Monotonic and wall clocks that move only when told to."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return 500.0 + self.elapsed

    def time(self) -> float:
        return 1_800_000_000.0 + self.elapsed

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds


def mock_models(*groups: tuple[str, int]) -> dict[str, Any]:
    return {name: {"deployments": [{"provider": "mock"} for _ in range(count)]} for name, count in groups}


def tracker(
    health: dict[str, Any] | None = None, *groups: tuple[str, int]
) -> tuple[HealthTracker, FakeClock]:
    config = parse_config({"models": mock_models(*(groups or (("chat", 1),))), "health": health or {}})
    clock = FakeClock()
    return HealthTracker(Gateway(config), clock=clock), clock


def deployment(health: HealthTracker, group: str = "chat", index: int = 0) -> Deployment:
    return health.gateway.models[group].deployments[index]


def row(health: HealthTracker, dep: Deployment) -> dict[str, Any]:
    return next(item for item in health.snapshot() if item["id"] == dep.id)


async def wait_for(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(0.01)


# --- the circuit breaker ---------------------------------------------------------------------------------


def test_the_breaker_opens_after_n_failures_within_the_window() -> None:
    health, clock = tracker({"breaker": {"failures": 3, "window": 10, "cooldown": 5}})
    dep = deployment(health)
    assert health.available(dep) and not health.any_unavailable
    for _ in range(2):
        health.failure(dep, "server_error")
        clock.advance(4)
    assert health.available(dep)
    health.failure(dep, "timeout")  # the third within 8 s
    assert not health.available(dep)
    assert health.any_unavailable
    snapshot = row(health, dep)
    assert snapshot["state"] == "open"
    assert snapshot["consecutive_failures"] == 3
    assert snapshot["last_error"] == "timeout"
    assert (snapshot["until"] - snapshot["since"]).total_seconds() == pytest.approx(5)


def test_failures_spread_beyond_the_window_do_not_open_it() -> None:
    health, clock = tracker({"breaker": {"failures": 3, "window": 10}})
    dep = deployment(health)
    for _ in range(6):
        health.failure(dep, "server_error")
        clock.advance(6)  # never three within 10 s
    assert health.available(dep)
    assert row(health, dep)["state"] == "closed"
    assert not health.any_unavailable


def test_a_high_failure_rate_opens_it_once_there_are_enough_requests() -> None:
    breaker = {"failures": 100, "window": 60, "failure_rate": 0.5, "min_requests": 10}
    health, clock = tracker({"breaker": breaker, "outlier": {"enabled": False}})
    dep = deployment(health)
    for index in range(9):  # 5 failures out of 9: too few requests to judge
        if index % 2:
            health.success(dep, 0.1)
        else:
            health.failure(dep, "server_error")
        clock.advance(1)
    assert health.available(dep)
    health.success(dep, 0.1)  # 5 of 10 requests failed, but the last one succeeded
    assert health.available(dep)
    health.failure(dep, "connection")  # 6 of 11
    assert not health.available(dep)
    assert row(health, dep)["error_rate"] == pytest.approx(6 / 11)


def test_half_open_lets_exactly_the_configured_probes_through() -> None:
    breaker = {"failures": 1, "cooldown": 10, "half_open_probes": 2, "probe_timeout": 30}
    health, clock = tracker({"breaker": breaker})
    dep = deployment(health)
    health.failure(dep, "server_error")
    clock.advance(9.9)
    assert not health.available(dep)
    clock.advance(0.2)
    assert health.available(dep)
    assert row(health, dep)["state"] == "half_open"
    health.begin(dep)
    assert health.available(dep)
    health.begin(dep)
    assert not health.available(dep)  # both probes in flight
    assert health.any_unavailable
    clock.advance(31)  # probes that never report free their slots
    assert health.available(dep)


def test_a_probe_success_closes_the_breaker() -> None:
    health, clock = tracker({"breaker": {"failures": 2, "cooldown": 10}})
    dep = deployment(health)
    health.failure(dep, "server_error")
    health.failure(dep, "server_error")
    clock.advance(10)
    assert health.available(dep)
    health.begin(dep)
    health.success(dep, 0.25)
    assert health.available(dep)
    assert not health.any_unavailable
    snapshot = row(health, dep)
    assert snapshot["state"] == "closed"
    assert snapshot["consecutive_failures"] == 0
    assert snapshot["latency_ewma"] == pytest.approx(0.25)
    health.failure(dep, "server_error")  # failures before the opening were forgotten
    assert health.available(dep)


def test_a_probe_failure_reopens_for_longer_up_to_the_cap() -> None:
    health, clock = tracker({"breaker": {"failures": 1, "cooldown": 10, "max_cooldown": 35}})
    dep = deployment(health)
    health.failure(dep, "server_error")
    for cooldown, longer in ((10, 20), (20, 35), (35, 35)):  # doubled on each reopening, capped
        clock.advance(cooldown - 0.1)
        assert not health.available(dep)
        clock.advance(0.1)
        assert health.available(dep)
        health.begin(dep)
        health.failure(dep, "server_error")
        assert not health.available(dep)
        snapshot = row(health, dep)
        assert snapshot["state"] == "open"
        assert (snapshot["until"] - snapshot["since"]).total_seconds() == pytest.approx(longer)


def test_the_cooldown_starts_over_after_a_long_closed_period() -> None:
    health, clock = tracker({"breaker": {"failures": 1, "cooldown": 10, "max_cooldown": 40}})
    dep = deployment(health)
    health.failure(dep, "server_error")
    clock.advance(10)
    health.begin(dep)
    health.failure(dep, "server_error")  # reopened for 20 s
    clock.advance(20)
    health.begin(dep)
    health.success(dep, 0.1)
    clock.advance(40)  # closed for max_cooldown
    health.failure(dep, "server_error")
    snapshot = row(health, dep)
    assert (snapshot["until"] - snapshot["since"]).total_seconds() == pytest.approx(10)


def test_a_429_with_retry_after_cools_down_then_comes_back() -> None:
    health, clock = tracker({"breaker": {"failures": 5}, "max_retry_after": 60})
    dep = deployment(health)
    health.failure(dep, "rate_limited", retry_after=7)
    assert not health.available(dep)
    assert health.any_unavailable
    snapshot = row(health, dep)
    assert snapshot["state"] == "cooling_down"
    assert (snapshot["until"] - snapshot["since"]).total_seconds() == pytest.approx(7)
    clock.advance(7)
    assert health.available(dep)
    assert not health.any_unavailable
    assert row(health, dep)["state"] == "closed"
    health.failure(dep, "rate_limited", retry_after=3600)  # capped by max_retry_after
    clock.advance(60)
    assert health.available(dep)


def test_a_429_without_retry_after_counts_as_a_failure_only() -> None:
    health, _ = tracker({"breaker": {"failures": 2}})
    dep = deployment(health)
    health.failure(dep, "rate_limited")
    assert health.available(dep)
    health.failure(dep, "rate_limited")
    assert not health.available(dep)


def test_unknown_failure_kinds_are_refused() -> None:
    health, _ = tracker()
    with pytest.raises(ValueError, match="unknown failure kind"):
        health.failure(deployment(health), "bad_request")


def test_upstream_errors_map_to_failure_kinds() -> None:
    def upstream_429(**headers: str) -> GatewayError:
        error = GatewayError(429, "slow down", headers=headers)
        error.upstream_status = 429
        return error

    cases: list[tuple[BaseException, Any]] = [
        (upstream_429(**{"retry-after": "12"}), ("rate_limited", 12.0)),
        (upstream_429(**{"retry-after-ms": "1500"}), ("rate_limited", 1.5)),
        (upstream_429(), ("rate_limited", None)),
        (GatewayError(429, "this gateway's own limit", code="deployment_rate_limited"), None),
        (upstream_error("bad key", code="upstream_auth_error"), ("auth", None)),
        (upstream_error("timed out", status=504, code="upstream_timeout"), ("timeout", None)),
        (upstream_error("refused", code="upstream_unreachable"), ("connection", None)),
        (upstream_error("reset", code="upstream_connection_error"), ("connection", None)),
        (upstream_error("failed with status 500"), ("server_error", None)),
        (GatewayError(400, "bad parameter"), None),
        (GatewayError(413, "too large"), None),
        (TimeoutError(), ("timeout", None)),
        (ConnectionResetError(), ("connection", None)),
    ]
    for error, expected in cases:
        assert upstream_failure(error) == expected, error


# --- outlier detection ------------------------------------------------------------------------------------


OUTLIER = {
    "breaker": {"failures": 1000, "failure_rate": 1.0, "min_requests": 1000, "cooldown": 10},
    "outlier": {"factor": 3, "min_requests": 10, "min_error_rate": 0.2, "max_ejected_share": 0.5},
}


def traffic(health: HealthTracker, dep: Deployment, requests: int, failures: int) -> None:
    for index in range(requests):
        if index < requests - failures:
            health.success(dep, 0.1)
        else:
            health.failure(dep, "server_error")


def test_a_deployment_failing_far_more_than_its_group_is_ejected() -> None:
    health, _ = tracker(OUTLIER, ("chat", 3))
    bad, good, other = (deployment(health, "chat", index) for index in range(3))
    traffic(health, good, 20, 1)
    traffic(health, other, 20, 1)
    traffic(health, bad, 10, 1)  # 10 %: below min_error_rate
    assert health.available(bad)
    traffic(health, bad, 10, 4)  # 5 of 20: 25 %, more than three times 5 %
    assert not health.available(bad)
    snapshot = row(health, bad)
    assert snapshot["state"] == "open"
    assert snapshot["outlier_ejected"] is True
    assert row(health, good)["outlier_ejected"] is False


def test_ejection_never_takes_more_than_the_share_of_a_group() -> None:
    health, _ = tracker(OUTLIER, ("pair", 2), ("solo", 1))
    first, second = deployment(health, "pair", 0), deployment(health, "pair", 1)
    traffic(health, second, 20, 0)
    traffic(health, first, 20, 10)
    assert not health.available(first)  # one of two: 50 %
    traffic(health, second, 20, 20)  # the other fails too, but would leave the group empty
    assert health.available(second)
    assert row(health, second)["outlier_ejected"] is False
    solo = deployment(health, "solo")
    traffic(health, solo, 50, 25)
    assert health.available(solo)  # a group of one never ejects


def test_outlier_detection_can_be_turned_off() -> None:
    health, _ = tracker({**OUTLIER, "outlier": {"enabled": False}}, ("chat", 2))
    bad, good = deployment(health, "chat", 0), deployment(health, "chat", 1)
    traffic(health, good, 20, 0)
    traffic(health, bad, 20, 10)
    assert health.available(bad)


# --- the snapshot and changing deployments ------------------------------------------------------------------


def test_the_snapshot_describes_every_deployment() -> None:
    health, clock = tracker({"breaker": {"failures": 2, "window": 30}}, ("chat", 2), ("embed", 1))
    dep = deployment(health)
    health.success(dep, 0.2)
    health.failure(dep, "server_error")
    clock.advance(1)
    rows = health.snapshot()
    assert [item["id"] for item in rows] == ["chat/0", "chat/1", "embed/0"]
    first = rows[0]
    assert first == {
        "id": "chat/0",
        "model_name": "chat",
        "provider": "mock",
        "state": "closed",
        "since": first["since"],
        "until": None,
        "requests": 2,
        "failures": 1,
        "error_rate": 0.5,
        "consecutive_failures": 1,
        "last_error": "server_error",
        "latency_ewma": pytest.approx(0.2),
        "outlier_ejected": False,
        "active_checks": False,
        "last_check": None,
    }
    assert isinstance(first["since"], datetime) and first["since"].tzinfo is not None
    assert rows[2]["requests"] == 0 and rows[2]["state"] == "closed"
    clock.advance(31)  # out of the window
    assert row(health, dep)["requests"] == 0


def test_state_of_deployments_that_are_gone_is_dropped() -> None:
    health, _ = tracker({"breaker": {"failures": 1}}, ("chat", 1), ("other", 1))
    dep = deployment(health)
    health.failure(dep, "server_error")
    assert health.any_unavailable
    gateway = health.gateway
    gateway.models = {"other": gateway.models["other"]}
    health.refresh()
    assert [item["id"] for item in health.snapshot()] == ["other/0"]
    assert not health.any_unavailable
    health.failure(dep, "server_error")  # a call that was in flight: ignored
    assert not health.any_unavailable


# --- active checks ----------------------------------------------------------------------------------------


@pytest.fixture
async def checked(fake: FakeOpenAI) -> AsyncIterator[Gateway]:
    """A started gateway checking a deployment on the fake upstream every 0.1 s (another opts out)."""
    config = parse_config(
        {
            "models": {
                "gpt": {
                    "deployments": [
                        {
                            "provider": "openai",
                            "base_url": fake.base_url,
                            "api_key": fake.api_key,
                            "model": "gpt-4o-mini",
                        },
                        {
                            "provider": "openai",
                            "base_url": fake.base_url,
                            "api_key": fake.api_key,
                            "model": "gpt-4o",
                            "health_check": False,
                        },
                    ]
                },
                "mock": {"deployments": [{"provider": "mock"}]},
            },
            "health": {"active": {"enabled": True, "interval": 0.1, "timeout": 2}},
        }
    )
    gateway = Gateway(config)
    await gateway.start()
    yield gateway
    await gateway.stop()


async def test_active_checks_send_the_smallest_chat_request(checked: Gateway, fake: FakeOpenAI) -> None:
    health = checked.health
    await wait_for(
        lambda: all(item["last_check"] is not None for item in health.snapshot() if item["active_checks"])
    )
    sent = [request.json for request in fake.requests_to("/v1/chat/completions")]
    assert sent
    assert sent[0] == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 1,
    }
    assert {body["model"] for body in sent} == {"gpt-4o-mini"}  # the deployment that opted out is left alone
    rows = {item["id"]: item for item in health.snapshot()}
    assert rows["gpt/0"]["active_checks"] and not rows["gpt/1"]["active_checks"]
    assert rows["gpt/1"]["last_check"] is None
    assert rows["mock/0"]["last_check"]["ok"] is True  # the mock provider's own check


async def test_a_failed_check_opens_the_breaker_and_a_passing_one_closes_it(
    checked: Gateway, fake: FakeOpenAI
) -> None:
    health = checked.health
    dep = checked.models["gpt"].deployments[0]
    fake.behave(status=500)
    await wait_for(lambda: not health.available(dep))
    snapshot = row(health, dep)
    assert snapshot["state"] == "open"
    assert snapshot["last_check"]["ok"] is False
    assert "500" in snapshot["last_check"]["error"]
    assert snapshot["last_error"] == "server_error"
    fake.reset()
    await wait_for(lambda: health.available(dep) and not health.any_unavailable)
    snapshot = row(health, dep)
    assert snapshot["state"] == "closed"
    assert snapshot["last_check"]["ok"] is True
    assert snapshot["last_check"]["error"] is None


async def test_a_rejected_key_fails_the_check_as_auth(checked: Gateway, fake: FakeOpenAI) -> None:
    dep = checked.models["gpt"].deployments[0]
    fake.behave(status=401)
    await wait_for(lambda: row(checked.health, dep)["last_error"] == "auth")
    assert not checked.health.available(dep)


class SlowCheck(Provider):
    """A provider whose check takes a while and records how many run at once."""

    name: ClassVar[str] = "slow_check"
    running = 0
    most = 0
    calls = 0
    seconds = 0.3

    async def health_check(self) -> None:
        cls = type(self)
        cls.calls += 1
        cls.running += 1
        cls.most = max(cls.most, cls.running)
        try:
            await asyncio.sleep(cls.seconds)
        finally:
            cls.running -= 1

    async def chat(self, call: ProviderCall) -> Any:
        raise NotImplementedError


class SlowCheckPlugin:
    @hookimpl
    def lockgate_register_providers(self, register: Callable[[str, type[Provider]], None]) -> None:
        register("slow_check", SlowCheck)


async def start_slow(timeout: float) -> Gateway:
    SlowCheck.running = SlowCheck.most = SlowCheck.calls = 0
    config = parse_config(
        {
            "models": {"slow": {"deployments": [{"provider": "slow_check"}]}},
            "health": {"active": {"enabled": True, "interval": 0.05, "timeout": timeout}},
        }
    )
    gateway = Gateway(config, extra_plugins=[("slow_check", SlowCheckPlugin())])
    await gateway.start()
    return gateway


async def test_checks_of_a_deployment_never_overlap() -> None:
    gateway = await start_slow(timeout=2)
    try:
        await wait_for(lambda: SlowCheck.calls >= 3)
        assert SlowCheck.most == 1
        assert row(gateway.health, gateway.models["slow"].deployments[0])["last_check"]["ok"] is True
    finally:
        await gateway.stop()


async def test_a_check_that_takes_too_long_fails_as_a_timeout() -> None:
    gateway = await start_slow(timeout=0.05)
    try:
        dep = gateway.models["slow"].deployments[0]
        await wait_for(lambda: not gateway.health.available(dep))
        snapshot = row(gateway.health, dep)
        assert snapshot["last_error"] == "timeout"
        assert snapshot["last_check"]["error"] == "No answer within 0.05 s."
    finally:
        await gateway.stop()


# --- shared through Redis -------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set")
    return url


def shared_config(redis_url: str, deployment_id: str, **health: Any) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url},
        "models": {"chat": {"deployments": [{"id": deployment_id, "provider": "mock"}]}},
        "health": {"breaker": {"failures": 2, "cooldown": 0.6}, **health},
    }


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    """``await start(**health)``: a started gateway sharing Redis with the others of the test."""
    deployment_id = f"health-test-{uuid.uuid4().hex}"
    gateways: list[Gateway] = []

    async def start(**health: Any) -> Gateway:
        gateway = Gateway(parse_config(shared_config(redis_url, deployment_id, **health)))
        await gateway.start()
        gateways.append(gateway)
        return gateway

    yield start
    if gateways:
        assert gateways[0].redis is not None
        await gateways[0].redis.run(lambda client: client.delete([state_key(deployment_id)]))
    for gateway in reversed(gateways):
        await gateway.stop()


def only(gateway: Gateway) -> Deployment:
    return gateway.models["chat"].deployments[0]


async def test_a_breaker_opened_by_one_replica_is_seen_by_the_others(replicas: Callable[..., Any]) -> None:
    first, second = await replicas(), await replicas()
    dep_first, dep_second = only(first), only(second)
    first.health.failure(dep_first, "server_error")
    first.health.failure(dep_first, "server_error")
    assert not first.health.available(dep_first)
    await wait_for(lambda: not second.health.available(dep_second), seconds=1.0)
    assert row(second.health, dep_second)["state"] == "open"
    assert row(second.health, dep_second)["requests"] == 0  # counts stay with the worker that saw them

    late = await replicas()  # started after the opening: reads it from Redis
    assert not late.health.available(only(late))
    assert row(late.health, only(late))["state"] == "open"

    # The cooldown ends everywhere at once; a probe success on one replica closes it for all.
    await wait_for(lambda: second.health.available(dep_second), seconds=2.0)
    second.health.begin(dep_second)
    second.health.success(dep_second, 0.05)
    await wait_for(lambda: not first.health.any_unavailable and not late.health.any_unavailable, seconds=1.0)
    assert row(first.health, dep_first)["state"] == "closed"


async def test_a_cool_down_is_shared(replicas: Callable[..., Any]) -> None:
    first, second = await replicas(), await replicas()
    first.health.failure(only(first), "rate_limited", retry_after=30)
    await wait_for(lambda: not second.health.available(only(second)), seconds=1.0)
    assert row(second.health, only(second))["state"] == "cooling_down"
    seen, set_by = row(second.health, only(second))["until"], row(first.health, only(first))["until"]
    assert abs((seen - set_by).total_seconds()) < 0.01


class Relay:
    """A TCP relay on 127.0.0.1 to the real Redis that can be cut and restored (an outage)."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.host, self.target_port = parts.hostname or "127.0.0.1", parts.port or 6379
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}{parts.path}"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def test_a_replica_back_from_a_redis_outage_loads_what_it_missed(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kv, "PROBE_SECONDS", 0.1)
    deployment_id = f"health-test-{uuid.uuid4().hex}"
    relay = Relay(redis_url)
    await relay.open()
    cut_off = Gateway(parse_config(shared_config(relay.url, deployment_id)))
    other = Gateway(
        parse_config(shared_config(redis_url, deployment_id, breaker={"failures": 1, "cooldown": 60}))
    )
    await cut_off.start()
    await other.start()
    try:
        await relay.cut()
        cut_off.health.failure(only(cut_off), "rate_limited", retry_after=0.1)  # its write finds Redis gone
        await wait_for(lambda: cut_off.redis is not None and not cut_off.redis.healthy)
        other.health.failure(only(other), "server_error")  # opened while the first hears nothing
        await asyncio.sleep(0.3)
        assert cut_off.health.available(only(cut_off))
        await relay.open()
        await wait_for(lambda: not cut_off.health.available(only(cut_off)), seconds=8.0)
        assert row(cut_off.health, only(cut_off))["state"] == "open"
    finally:
        assert other.redis is not None
        await other.redis.run(lambda client: client.delete([state_key(deployment_id)]))
        await other.stop()
        await cut_off.stop()
        await relay.cut()


async def test_redis_being_down_never_fails_the_request_path() -> None:
    deployment_id = f"health-test-{uuid.uuid4().hex}"
    config = shared_config(f"redis://127.0.0.1:{free_port()}/0", deployment_id)
    config["redis"]["timeout"] = 0.2
    gateway = Gateway(parse_config(config))
    await gateway.start()
    try:
        dep = only(gateway)
        gateway.health.success(dep, 0.1)
        gateway.health.failure(dep, "server_error")
        gateway.health.failure(dep, "server_error")
        assert not gateway.health.available(dep)  # the breaker still works in this worker
        await asyncio.sleep(0.1)  # the background write fails quietly
        assert row(gateway.health, dep)["state"] == "open"
    finally:
        await gateway.stop()
