"""Through a running gateway: every request leaves exactly one usage record, clients that leave in the
middle of a stream included, and a graceful shutdown writes them all."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx

from gateway_core.store.migrate import upgrade
from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer
from tests.waiting import eventually_async

REQUESTS_PER_KIND = 12


def gateway_config(database: Path) -> dict[str, Any]:
    return {
        "server": {"graceful_timeout": 10},
        "database": {"url": f"sqlite://{database}"},
        "usage": {"batch_size": 8, "flush_seconds": 0.05},
        "models": {
            "mock-slow": {"deployments": [{"provider": "mock", "options": {"chunks": 20, "latency_ms": 15}}]}
        },
    }


def usage_counters(server: GatewayServer) -> dict[str, Any]:
    """The usage log's counters, as ``/ready`` shows them."""
    counters: dict[str, Any] = httpx.get(f"{server.url}/ready", timeout=10).json()["usage"]
    return counters


async def one_request(client: httpx.AsyncClient, kind: str, index: int) -> str:
    """Send one request of a kind (``plain``, ``stream``, ``leave``); returns its request id."""
    body = {
        "model": "mock-slow",
        "messages": [{"role": "user", "content": f"request {kind} {index} " + "word " * 40}],
        "stream": kind != "plain",
    }
    if kind == "plain":
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.headers["x-request-id"]
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        async for line in response.aiter_lines():
            if kind == "leave" and line.startswith("data: {"):
                break  # the client closes the connection after the first chunk
    return request_id


async def test_concurrent_requests_leave_one_record_each(tmp_path: Path) -> None:
    database = tmp_path / "lockgate.db"
    await upgrade(f"sqlite://{database}")
    server = GatewayServer(gateway_config(database)).start()
    try:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {DEFAULT_TEST_KEY}"}, timeout=30
        ) as client:
            ids = await asyncio.gather(
                *(
                    one_request(client, kind, index)
                    for index in range(REQUESTS_PER_KIND)
                    for kind in ("plain", "stream", "leave")
                )
            )
        # The gateway notices the clients that left a moment later; a record too many still shows below.
        await eventually_async(
            lambda: usage_counters(server)["queued"] >= 3 * REQUESTS_PER_KIND, what="a record per request"
        )
        assert usage_counters(server)["queued"] == 3 * REQUESTS_PER_KIND
        assert usage_counters(server)["dropped"] == 0
    finally:
        await asyncio.to_thread(server.stop)  # graceful: the usage log is flushed before the database closes

    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT request_id, status, stream, model, provider FROM usage_records"
        ).fetchall()
        rollup_requests = connection.execute("SELECT SUM(requests) FROM usage_rollups").fetchone()[0]
    assert sorted(row[0] for row in rows) == sorted(ids)  # exactly one record per request
    statuses = sorted(row[1] for row in rows)
    assert statuses.count(200) == 2 * REQUESTS_PER_KIND
    assert statuses.count(499) == REQUESTS_PER_KIND  # the clients that left mid-stream
    assert {(row[3], row[4]) for row in rows} == {("mock-slow", "mock")}
    assert rollup_requests == 3 * REQUESTS_PER_KIND
