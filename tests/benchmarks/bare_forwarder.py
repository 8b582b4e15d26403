"""The floor of the benchmark: the least a Starlette-on-hypercorn forwarder can do.

One route, ``POST /v1/chat/completions``: read the body, post it with one shared aiohttp
``ClientSession`` to the upstream and answer the upstream's bytes; a stream's chunks are passed
through with ``StreamingResponse``. No auth, no validation, no routing. It is served like Lockgate's
single worker: ``hypercorn.asyncio.serve`` on uvloop with the same hypercorn settings (see
``gateway_core.server.hypercorn_config``; repeated here so the floor does not import the gateway).

Run: ``python -m tests.benchmarks.bare_forwarder --port 9001 --upstream http://127.0.0.1:9000/v1``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

import aiohttp
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def create_app(upstream: str) -> Starlette:
    url = upstream.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-upstream-key"}
    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Same pool settings as Lockgate's HttpClient: unlimited keep-alive connections.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
        state["session"] = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))
        try:
            yield
        finally:
            await state["session"].close()

    async def chat_completions(request: Request) -> Response:
        body = await request.body()
        upstream_response = await state["session"].post(url, data=body, headers=headers)
        content_type = upstream_response.headers.get("Content-Type", "application/json")
        if content_type.startswith("text/event-stream"):
            return StreamingResponse(
                upstream_response.content.iter_any(),
                status_code=upstream_response.status,
                media_type=content_type,
                background=BackgroundTask(upstream_response.release),
            )
        data = await upstream_response.read()
        upstream_response.release()
        return Response(data, status_code=upstream_response.status, media_type=content_type)

    return Starlette(
        routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])], lifespan=lifespan
    )


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    """Lockgate's single-worker hypercorn settings (defaults of its ``server:`` section)."""
    hc = HypercornConfig()
    hc.bind = [f"{host}:{port}"]
    hc.workers = 1
    hc.keep_alive_timeout = 75.0
    hc.graceful_timeout = 30.0
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.worker_class = "uvloop"
    hc.h11_max_incomplete_size = 64 * 1024
    return hc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:9000/v1"
    )
    args = parser.parse_args()
    app = create_app(args.upstream)
    hc = hypercorn_config(args.host, args.port)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await hypercorn_serve(app, hc, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    import uvloop

    uvloop.run(run())


if __name__ == "__main__":
    main()
