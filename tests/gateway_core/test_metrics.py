"""``GET /metrics``: known traffic through a real gateway, read back in the Prometheus text format."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_core.hookspecs import hookimpl
from gateway_core.metrics import forget_dead_workers
from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer
from tests.fakes import FakeOpenAI

CHAT = "/v1/chat/completions"
AUTH = {"Authorization": f"Bearer {DEFAULT_TEST_KEY}"}
METRICS_TOKEN = "scrape-token-0123456789"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition: ``(name, labels) -> value``."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def scrape(server: GatewayServer, **headers: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{server.url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


def config(fake: FakeOpenAI, refused_port: int, **metrics: Any) -> dict[str, Any]:
    upstream = {"provider": "openai", "api_key": fake.api_key}
    return {
        "models": {
            "gpt-4o-mini": {"deployments": [{**upstream, "base_url": fake.base_url}]},
            "down": {
                "deployments": [
                    {**upstream, "model": "gpt-4o-mini", "base_url": f"http://127.0.0.1:{refused_port}/v1"}
                ]
            },
        },
        "dlp": {"filters": {"pii_patterns": {}}},
        "metrics": {"enabled": True, **metrics},
    }


@pytest.fixture
def server(fake: FakeOpenAI, refused_port: int) -> Iterator[GatewayServer]:
    with GatewayServer(config(fake, refused_port)) as server:
        yield server


def chat(server: GatewayServer, model: str, content: str = "hello there", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{server.url}{CHAT}", json=body, headers=AUTH, timeout=30)


def stream_usage(response: httpx.Response) -> dict[str, Any]:
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
    usages = [orjson.loads(event)["usage"] for event in events if orjson.loads(event).get("usage")]
    assert len(usages) == 1
    return usages[0]  # type: ignore[no-any-return]


def test_known_traffic_is_counted_exactly(server: GatewayServer) -> None:
    answers = [chat(server, "gpt-4o-mini"), chat(server, "gpt-4o-mini", "write to bob@example.com")]
    streamed = chat(server, "gpt-4o-mini", stream=True, stream_options={"include_usage": True})
    failed = chat(server, "down")
    unknown = chat(server, "no-such-model-xyz")
    no_key = httpx.post(f"{server.url}{CHAT}", json={"model": "gpt-4o-mini", "messages": []})
    assert [r.status_code for r in [*answers, streamed]] == [200, 200, 200]
    assert failed.status_code >= 500
    assert (unknown.status_code, no_key.status_code) == (404, 401)
    usages = [r.json()["usage"] for r in answers] + [stream_usage(streamed)]

    found = scrape(server)

    series = {"owner": "test", "model": "gpt-4o-mini"}
    assert value(found, "gateway_requests_total", **series, status_code="200") == 3
    down = {"owner": "test", "model": "down"}
    assert value(found, "gateway_requests_total", **down, status_code=str(failed.status_code)) == 1
    assert value(found, "gateway_requests_total", owner="test", model="", status_code="404") == 1
    assert value(found, "gateway_requests_total", owner="", model="", status_code="401") == 1
    total = sum(v for (name, _), v in found.items() if name == "gateway_requests_total")
    assert total == 6
    # An unknown model name never becomes a label value.
    assert not any("no-such-model-xyz" in str(labels) for _, labels in found)

    assert value(found, "gateway_request_duration_seconds_count", **series) == 3
    assert value(found, "gateway_request_duration_seconds_count", **down) == 1
    assert value(found, "gateway_time_to_first_token_seconds_count", **series) == 1
    assert value(found, "gateway_time_to_first_token_seconds_sum", **series) > 0
    for token_type, key in [("prompt", "prompt_tokens"), ("completion", "completion_tokens")]:
        expected = sum(usage[key] for usage in usages)
        assert expected > 0
        assert value(found, "gateway_tokens_used_total", **series, token_type=token_type) == expected
    assert value(found, "gateway_cost_usd_total", **series) > 0
    assert value(found, "gateway_requests_in_flight") == 0

    errors = {
        (dict(labels)["owner"], dict(labels)["model"], dict(labels)["code"]): v
        for (name, labels), v in found.items()
        if name == "gateway_request_errors_total"
    }
    assert errors == {
        ("test", "down", failed.json()["error"]["code"]): 1,
        ("test", "", "model_not_found"): 1,
        ("", "", "missing_api_key"): 1,
    }

    served = {"model": "gpt-4o-mini", "deployment": "gpt-4o-mini/0", "provider": "openai"}
    assert value(found, "gateway_upstream_requests_total", **served, outcome="success") == 3
    assert value(found, "gateway_upstream_duration_seconds_count", **served) == 3
    refused = {"model": "down", "deployment": "down/0", "provider": "openai"}
    attempts = int(failed.headers["x-lockgate-attempts"])
    assert value(found, "gateway_upstream_requests_total", **refused, outcome="connection") == attempts
    upstream_calls = sum(v for (name, _), v in found.items() if name == "gateway_upstream_requests_total")
    assert upstream_calls == 3 + attempts  # the 404 and the 401 never reached an upstream
    dlp = {
        dict(labels)["entity_type"]: v
        for (name, labels), v in found.items()
        if name == "gateway_dlp_findings_total"
    }
    assert dlp == {"EMAIL_ADDRESS": 1}


def test_an_upstream_error_is_counted_with_its_status_and_each_attempt(
    server: GatewayServer, fake: FakeOpenAI
) -> None:
    fake.behave(status=500)
    failed = chat(server, "gpt-4o-mini")
    assert failed.status_code >= 500
    attempts = int(failed.headers["x-lockgate-attempts"])

    found = scrape(server)

    series = {"owner": "test", "model": "gpt-4o-mini"}
    assert value(found, "gateway_requests_total", **series, status_code=str(failed.status_code)) == 1
    assert value(found, "gateway_requests_total", **series, status_code="200") == 0
    served = {"model": "gpt-4o-mini", "deployment": "gpt-4o-mini/0", "provider": "openai"}
    assert value(found, "gateway_upstream_requests_total", **served, outcome="server_error") == attempts
    assert value(found, "gateway_upstream_duration_seconds_count", **served) == attempts
    assert value(found, "gateway_request_errors_total", **series, code="upstream_error") == 1


def test_rate_limit_rejections_are_counted_by_code(fake: FakeOpenAI, refused_port: int) -> None:
    limited = config(fake, refused_port)
    limited["plugins"] = {"rate_limits": {"defaults": {"rpm": 2}}}
    with GatewayServer(limited) as server:
        statuses = [chat(server, "gpt-4o-mini").status_code for _ in range(5)]
        found = scrape(server)
    assert statuses == [200, 200, 429, 429, 429]
    series = {"owner": "test", "model": "gpt-4o-mini"}
    assert value(found, "gateway_requests_total", **series, status_code="429") == 3
    assert value(found, "gateway_request_errors_total", **series, code="rate_limit_exceeded") == 3


def test_requests_in_flight_are_counted_while_they_last(server: GatewayServer, fake: FakeOpenAI) -> None:
    fake.behave(delay=1.0)
    slow = threading.Thread(target=chat, args=(server, "gpt-4o-mini"))
    slow.start()
    try:
        for _ in range(100):
            if fake.requests_to(CHAT):
                break
            threading.Event().wait(0.02)
        assert value(scrape(server), "gateway_requests_in_flight") == 1
    finally:
        slow.join()
    assert value(scrape(server), "gateway_requests_in_flight") == 0


def test_scrapes_are_not_requests(server: GatewayServer) -> None:
    for _ in range(3):
        scrape(server)
    found = scrape(server)
    assert not [name for name, _ in found if name == "gateway_requests_total"]


def test_bearer_protected_metrics(fake: FakeOpenAI, refused_port: int) -> None:
    protected = config(fake, refused_port, auth="bearer", token=METRICS_TOKEN)
    with GatewayServer(protected) as server:
        assert chat(server, "gpt-4o-mini").status_code == 200
        url = f"{server.url}/metrics"
        for headers in [{}, {"Authorization": "Bearer wrong"}, AUTH, {"Authorization": METRICS_TOKEN}]:
            refused = httpx.get(url, headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error"]["code"] == "invalid_metrics_token"
        found = scrape(server, Authorization=f"Bearer {METRICS_TOKEN}")
        series = {"owner": "test", "model": "gpt-4o-mini"}
        assert value(found, "gateway_requests_total", **series, status_code="200") == 1


def test_owner_is_the_organization_when_configured(fake: FakeOpenAI, refused_port: int) -> None:
    data = config(fake, refused_port, owner="organization")
    data["plugins"] = {"config_keys": {"keys": [{"name": "test", "key": DEFAULT_TEST_KEY, "org": "acme"}]}}
    with GatewayServer(data) as server:
        assert chat(server, "gpt-4o-mini").status_code == 200
        found = scrape(server)
    assert value(found, "gateway_requests_total", owner="acme", model="gpt-4o-mini", status_code="200") == 1


def test_disabled_metrics(fake: FakeOpenAI, refused_port: int) -> None:
    with GatewayServer(config(fake, refused_port, enabled=False)) as server:
        assert chat(server, "gpt-4o-mini").status_code == 200
        assert httpx.get(f"{server.url}/metrics").status_code == 404


def test_bearer_needs_a_token() -> None:
    from gateway_core.config import parse_config
    from gateway_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"metrics: .*auth: bearer needs a token"):
        parse_config({"metrics": {"auth": "bearer"}})


def test_plugins_add_metrics_to_the_same_exposition(fake: FakeOpenAI, refused_port: int) -> None:
    class Plugin:
        @hookimpl
        def lockgate_startup(self, gateway: Any) -> None:
            gateway.metrics.counter("myplugin_events_total", "Events.", ["kind"]).labels("started").inc()

    with GatewayServer(config(fake, refused_port), extra_plugins=[("myplugin", Plugin())]) as server:
        found = scrape(server)
    assert value(found, "myplugin_events_total", kind="started") == 1


def test_a_killed_workers_live_gauges_are_dropped_at_the_next_scrape(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
        (tmp_path / f"counter_{pid}.db").write_bytes(b"")

    forget_dead_workers(str(tmp_path))

    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(
        [f"counter_{dead.pid}.db", f"counter_{os.getpid()}.db", f"gauge_livesum_{os.getpid()}.db"]
    )
