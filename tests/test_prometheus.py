"""The compose stack's monitoring configuration, checked with the real tools: promtool validates the
scrape configuration, a real Prometheus scrapes a running gateway and answers a query with the
requests it served, and the Grafana dashboard asks only for series the gateway exports.

Prometheus and promtool come from Debian's ``prometheus`` package (``.ci/run`` installs it). Without
them these tests fail under CI and are skipped elsewhere, saying what to install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer

ROOT = Path(__file__).resolve().parent.parent
SCRAPE_CONFIG = ROOT / "conf" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "conf" / "grafana" / "dashboards" / "lockgate.json"
REQUESTS = 7
#: A name of a series in a PromQL expression (functions and keywords are followed by "(" or are
#: label names inside braces; these are removed before looking).
_SERIES = re.compile(r"\bgateway_[a-z0-9_]+\b")


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayServer]:
    config = {
        "metrics": {"enabled": True},
        "models": {
            "mock-echo": {"deployments": [{"provider": "mock"}]},
            "mock-stream": {"deployments": [{"provider": "mock", "options": {"chunks": 3}}]},
        },
    }
    with GatewayServer(config) as server:
        with openai.OpenAI(base_url=server.base_url, api_key=DEFAULT_TEST_KEY, max_retries=0) as client:
            for _ in range(REQUESTS - 1):
                client.chat.completions.create(
                    model="mock-echo", messages=[{"role": "user", "content": "hi"}]
                )
            stream = client.chat.completions.create(
                model="mock-stream", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            for _ in stream:
                pass
        yield server


#: The series names of each metric type (a family with no sample yet still says its name and type).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def exported_series(server: GatewayServer) -> set[str]:
    """Every series name ``/metrics`` declares, whether or not it has samples yet."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_promtool_accepts_the_scrape_configuration() -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_real_prometheus_scrapes_the_gateway(gateway: GatewayServer, tmp_path: Path) -> None:
    prometheus, promtool = tool("prometheus"), tool("promtool")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: lockgate\n    static_configs: [{{targets: ['127.0.0.1:{gateway.port}']}}]\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        query = 'sum(gateway_requests_total{status_code="200"})'
        deadline = time.monotonic() + 60
        answer = ""
        while time.monotonic() < deadline:
            result = subprocess.run(
                [promtool, "query", "instant", url, query], capture_output=True, text=True, timeout=30
            )
            answer = result.stdout.strip()  # e.g. "{} => 7 @[1796700000.123]"
            if result.returncode == 0 and f"=> {REQUESTS} @" in answer:
                break
            time.sleep(0.5)
        assert f"=> {REQUESTS} @" in answer, answer
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_dashboard_asks_only_for_series_the_gateway_exports(gateway: GatewayServer) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions += [variable["definition"] for variable in dashboard["templating"]["list"]]
    asked = {name for expression in expressions for name in _SERIES.findall(expression)}
    assert asked, "the dashboard queries nothing"
    missing = asked - exported_series(gateway)
    assert not missing, f"the dashboard queries series the gateway does not export: {sorted(missing)}"
