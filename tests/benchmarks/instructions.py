"""Instructions per request under callgrind: a cost figure that a busy machine does not disturb.

Wall-clock figures on a shared 2-core machine move by tens of percent with the neighbours' load;
the number of instructions a server executes per request does not (it repeats within about 0.5 %).
Each server is started under ``valgrind --tool=callgrind`` with instrumentation off, warmed up, and
then instrumented for two runs of different lengths; the difference of the two totals over the
difference of the request counts cancels the fixed cost of switching the instrumentation.

It counts user-space instructions only (no system calls, no cache misses), so it ranks changes to
the request path reliably but does not convert to requests/s one to one.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

from tests.benchmarks.loadgen import run_load

WINDOWS = (100, 400)


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def valgrind_prefix(out_dir: Path, name: str) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/{name}.%p.out",
    ]


def _total(path: Path) -> int:
    with path.open() as dump:
        for line in dump:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {path}")


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=60)


async def instructions_per_request(
    pid: int, host: str, port: int, payload: bytes, out_dir: Path, name: str, concurrency: int
) -> float:
    """Instructions per request of the callgrind-run server ``pid`` (already answering)."""
    await run_load(host, port, payload, concurrency=concurrency, max_requests=200, max_seconds=120)
    totals = []
    for count in WINDOWS:
        _control(pid, "--instr=on")
        _control(pid, "--zero")
        result = await run_load(
            host, port, payload, concurrency=concurrency, max_requests=count, max_seconds=600
        )
        if result.count != count or result.errors:
            raise RuntimeError(f"{name}: {result.count} of {count} requests answered, {result.errors} errors")
        _control(pid, "--dump")
        _control(pid, "--instr=off")
        await asyncio.sleep(0.5)
        dumps = sorted(out_dir.glob(f"{name}.{pid}.out*"), key=lambda path: path.stat().st_mtime)
        totals.append(_total(dumps[-1]))
    return (totals[1] - totals[0]) / (WINDOWS[1] - WINDOWS[0])
