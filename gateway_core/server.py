"""Serving the gateway with hypercorn (one process, or several workers)."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from typing import Any

from gateway_core.config import GatewayConfig, load_config
from gateway_core.logs import configure_logging
from gateway_core.metrics import MULTIPROC_ENV
from gateway_core.slow_clients import GatewayHypercornConfig, install_header_deadlines

CONFIG_ENV = "LOCKGATE_CONFIG"
DEFAULT_CONFIG = "conf/lockgate.yaml"

log = logging.getLogger("lockgate")


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def hypercorn_config(config: GatewayConfig) -> GatewayHypercornConfig:
    server = config.server
    install_header_deadlines()  # what serves the connections of this configuration in this process
    hc = GatewayHypercornConfig()
    hc.bind = [f"{server.host}:{server.port}"]
    hc.workers = server.workers
    hc.keep_alive_timeout = server.keep_alive_timeout
    hc.header_timeout = server.header_timeout
    hc.graceful_timeout = server.graceful_timeout
    hc.accesslog = logging.getLogger("hypercorn.access") if server.access_log else None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.worker_class = "uvloop" if _has_uvloop() else "asyncio"
    # The gateway enforces its own body limit with an OpenAI-shaped 413.
    hc.h11_max_incomplete_size = 64 * 1024
    # SDK clients keep their connections for long; hypercorn's default closes them every 1,000 requests.
    hc.keep_alive_max_requests = 100_000
    return hc


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def app_from_env() -> Any:
    """ASGI factory for hypercorn worker processes: reads the config named by ``LOCKGATE_CONFIG``."""
    from gateway_core.app import create_app

    config = load_config(config_path())
    configure_logging(config.logging)
    install_header_deadlines()
    return create_app(config, freeze_gc=True)


def serve(config: GatewayConfig, path: str) -> None:
    """Run the gateway until SIGINT/SIGTERM, then shut down gracefully (in-flight requests finish)."""
    hc = hypercorn_config(config)
    if config.server.workers > 1:
        from hypercorn.run import run

        os.environ[CONFIG_ENV] = path
        hc.application_path = "gateway_core.server:app_from_env()"
        # Workers inherit this: SIGTERM sent to the whole group (systemd's default) must not kill them
        # mid-request. The main process stops them gracefully (hypercorn sets its own handler after
        # starting them, as it does for SIGINT).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # The workers (spawned: they import prometheus-client afresh) write their metrics to files in
        # a folder of this server start; GET /metrics adds them up (gateway_core.metrics).
        metrics_dir = tempfile.mkdtemp(prefix="lockgate-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
        try:
            run(hc)
            # hypercorn returns once one worker has exited: the others may still be finishing their
            # requests and flushes, and still writing their metrics.
            for worker in multiprocessing.active_children():
                worker.join(config.server.graceful_timeout + 10)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return

    from hypercorn.asyncio import serve as hypercorn_serve

    from gateway_core.app import create_app

    app = create_app(config, freeze_gc=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # Start-up hooks run before the port is bound: a plugin's ConfigError ends here, as itself.
        await app.state.gateway.start()
        gc.freeze()  # start-up objects live as long as the process: keep them out of every collection
        await hypercorn_serve(app, hc, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    if hc.worker_class == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
