"""``GET /metrics`` of ``lockgate serve`` with two workers: whichever worker answers the scrape, it adds
up the requests both served; the server removes the workers' metric files when it exits."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from gateway_core.testing import DEFAULT_TEST_KEY, free_port
from tests.gateway_core.test_metrics import samples, value

REQUESTS = 40


def test_metrics_add_up_the_requests_of_both_workers(tmp_path: Path) -> None:
    port = free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port, "workers": 2},
        "metrics": {"enabled": True},
        "models": {"mock-echo": {"deployments": [{"provider": "mock", "options": {"latency_ms": 20}}]}},
        "plugins": {"config_keys": {"keys": [{"name": "test", "key": DEFAULT_TEST_KEY}]}},
    }
    (tmp_path / "gw.yaml").write_text(orjson.dumps(config).decode())  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if k not in ("LOCKGATE_LOAD_PLUGINS", "LOCKGATE_CONFIG")}
    env["TMPDIR"] = str(tmp_path)  # where the server makes its metrics folder
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway_core.cli", "serve", "--config", str(tmp_path / "gw.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "lockgate serve was not ready within 30 s"
            time.sleep(0.1)

        (folder,) = tmp_path.glob("lockgate-metrics-*")
        sent = 0
        while len(writers(folder)) < 2:  # until both workers served some (the kernel decides who accepts)
            assert sent < 10 * REQUESTS, "one worker took every connection"
            statuses = asyncio.run(send_requests(url))
            assert statuses == [200] * REQUESTS
            sent += REQUESTS

        # Each scrape on a new connection: either worker may answer; each adds up both.
        for _ in range(6):
            response = httpx.get(f"{url}/metrics", headers={"Connection": "close"})
            assert response.status_code == 200
            found = samples(response.text)
            labels = {"owner": "test", "model": "mock-echo"}
            assert value(found, "gateway_requests_total", **labels, status_code="200") == sent
            assert value(found, "gateway_request_duration_seconds_count", **labels) == sent
            assert value(found, "gateway_requests_in_flight") == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()
    assert not list(tmp_path.glob("lockgate-metrics-*")), "the server removes its metrics folder"


async def send_requests(url: str) -> list[int]:
    """:data:`REQUESTS` chat requests at once, each on its own connection."""
    body = {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {DEFAULT_TEST_KEY}", "Connection": "close"}

    async def one() -> int:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            return response.status_code

    return list(await asyncio.gather(*(one() for _ in range(REQUESTS))))


def writers(folder: Path) -> set[str]:
    """The workers that counted a request: each has its own counter file, named by its pid."""
    return {m.group(1) for f in folder.iterdir() if (m := re.fullmatch(r"counter_(\d+)\.db", f.name))}
