"""What a worker killed outright (``kill -9``) loses of the usage log: only the records of its last
``usage.flush_seconds`` (0.2 s by default) or so, never older ones."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import IO

import httpx

from gateway_core.store.migrate import upgrade
from gateway_core.testing import free_port

KEY = "lg-killed-worker-0123456789abcdef"
_script = shutil.which("lockgate", path=os.path.dirname(sys.executable))
LOCKGATE = [_script] if _script else [sys.executable, "-m", "gateway_core.cli"]
#: Scheduling slack on a loaded test machine, on top of the promised window.
SLACK = 0.3


def serve(tmp_path: Path, port: int, log: IO[str]) -> subprocess.Popen[bytes]:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            server: {{host: 127.0.0.1, port: {port}}}
            database: {{url: "sqlite://{tmp_path / "lockgate.db"}"}}
            models:
              mock-echo:
                deployments: [{{provider: mock}}]
            plugins:
              config_keys:
                keys: [{{name: killed, key: {KEY}}}]
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LOCKGATE_LOAD_PLUGINS", "LOCKGATE_CONFIG")}
    return subprocess.Popen(
        [*LOCKGATE, "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )


def stored_request_ids(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        return {row[0] for row in connection.execute("SELECT request_id FROM usage_records")}


async def test_a_killed_worker_loses_at_most_its_last_flush_interval_of_records(tmp_path: Path) -> None:
    await upgrade(f"sqlite://{tmp_path / 'lockgate.db'}")
    port = free_port()
    with (tmp_path / "serve.log").open("w") as log:
        process = serve(tmp_path, port, log)
    answered: list[tuple[float, str]] = []  # when each answer came, and its request id
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "lockgate serve was not ready within 30 s"
                time.sleep(0.1)
            body = {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {KEY}"}
            for _ in range(150):  # light load: one request at a time, about 2 s of them
                response = client.post("/v1/chat/completions", json=body, headers=headers)
                assert response.status_code == 200
                answered.append((time.monotonic(), response.headers["x-request-id"]))
                time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    stored = stored_request_ids(tmp_path / "lockgate.db")
    missing = [(killed_at - at, request_id) for at, request_id in answered if request_id not in stored]
    oldest_missing = max((age for age, _ in missing), default=0.0)
    print(
        f"answered {len(answered)}, lost {len(missing)}, the oldest lost {oldest_missing:.3f} s before the kill"
    )
    assert oldest_missing <= 0.2 + SLACK, (
        f"{len(missing)} records lost, the oldest {oldest_missing:.2f} s old"
    )
    assert len(stored) >= len(answered) - len(missing)
