"""Benchmark Lockgate against a bare Starlette-on-hypercorn forwarder and the fake upstream itself.

Starts four servers on free ports of 127.0.0.1, each in its own process (so CPU time and RSS are
theirs alone): the fake OpenAI upstream, the bare forwarder, ``lockgate serve`` with auth on (the
core profile) and ``lockgate serve`` with the full policy profile (auth, Redis rate limits, a budget
and the usage log; see :mod:`tests.benchmarks.full_policy`), which is skipped when Redis is not
running. The load generator runs in this process. Each round measures each target in turn: latency
at concurrency 1, requests/s and latency at concurrency 16, and a streamed answer's time to first
byte.

    python -m tests.benchmarks.run                            # about 4 minutes, prints the tables
    python -m tests.benchmarks.run --quick                    # about 45 seconds
    python -m tests.benchmarks.run --quick --no-full-policy   # the core profile only
    python -m tests.benchmarks.run --write docs/benchmarks.md # what `make bench` runs
    python -m tests.benchmarks.run --quick --profile lockgate.svg   # also samples Lockgate with py-spy
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import datetime
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.benchmarks import full_policy, instructions
from tests.benchmarks.fake_upstream import MODEL
from tests.benchmarks.loadgen import LoadResult, build_request, median, run_load
from tests.benchmarks.report import CONCURRENCY, Plan, Report, Samples, ms, write_doc

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
API_KEY = "lg-bench-key-0123456789abcdef"
UPSTREAM_KEY = "sk-bench-upstream-key"

FULL = Plan(rounds=3, warmup_seconds=1.0, c1_seconds=3.0, c16_seconds=5.0, stream_seconds=2.0)
QUICK = Plan(rounds=1, warmup_seconds=0.5, c1_seconds=2.0, c16_seconds=3.0, stream_seconds=1.5)

FULL_POLICY_LABEL = "Lockgate full policy"

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _child_setup(cpu: int | None) -> Callable[[], None]:
    """Runs in the child before exec: die with this process, and stay on the given CPU."""

    def setup() -> None:
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphaned servers if the runner is killed
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return setup


def pin(pid: int, cpu: int | None) -> None:
    """Move every thread of ``pid`` to ``cpu`` (nothing when pinning is off)."""
    if cpu is None:
        return
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), {cpu})


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(name: str, command: list[str], port: int, workdir: Path, cpu: int | None) -> Server:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_setup(cpu),  # this process starts no threads
        )
    return Server(name, port, process, log_path)


def lockgate_config(port: int, upstream_port: int) -> dict[str, Any]:
    """The core profile: one model on the fake upstream and the bench key, auth on."""
    return {
        "server": {"host": HOST, "port": port, "workers": 1},
        "models": {
            MODEL: {
                "deployments": [
                    {
                        "provider": "openai",
                        "base_url": f"http://{HOST}:{upstream_port}/v1",
                        "api_key": UPSTREAM_KEY,
                    }
                ]
            }
        },
        "plugins": {"config_keys": {"keys": [{"name": "bench", "key": API_KEY}]}},
    }


def lockgate_cli(*, through_python: bool = False) -> list[str]:
    """The ``lockgate`` command (``through_python`` names the interpreter first, as valgrind needs)."""
    script = Path(sys.executable).parent / "lockgate"
    if not script.exists():
        return [sys.executable, "-m", "gateway_core.cli"]
    return [sys.executable, str(script)] if through_python else [str(script)]


def lockgate_command(config_path: Path, *, through_python: bool = False) -> list[str]:
    """``lockgate serve`` with the configuration at ``config_path``."""
    return [*lockgate_cli(through_python=through_python), "serve", "--config", str(config_path)]


def bare_command(port: int, upstream_port: int) -> list[str]:
    upstream_url = f"http://{HOST}:{upstream_port}/v1"
    return [
        sys.executable,
        "-m",
        "tests.benchmarks.bare_forwarder",
        "--port",
        str(port),
        "--upstream",
        upstream_url,
    ]


def write_config(workdir: Path, port: int, config: dict[str, Any]) -> Path:
    path = workdir / f"lockgate-{port}.yaml"
    # JSON is YAML; the file holds only throwaway keys and lives in a temporary folder.
    path.write_bytes(orjson.dumps(config))
    return path


def write_lockgate_config(workdir: Path, port: int, upstream_port: int) -> Path:
    return write_config(workdir, port, lockgate_config(port, upstream_port))


@dataclass(frozen=True)
class FullPolicySetup:
    """Where the full policy profile keeps its state in one run."""

    key_name: str
    database: Path


def start_full_policy(setup: FullPolicySetup, workdir: Path, upstream_port: int, cpu: int | None) -> Server:
    """Write the full policy configuration, create its database and start the gateway."""
    port = free_port()
    config = full_policy.full_policy_config(
        lockgate_config(port, upstream_port), setup.database, setup.key_name
    )
    config_path = write_config(workdir, port, config)
    full_policy.migrate(lockgate_cli(), config_path, ROOT)
    return start_server("lockgate-full", lockgate_command(config_path), port, workdir, cpu)


@dataclass(frozen=True)
class Servers:
    upstream: Server
    bare: Server
    gate: Server
    #: The full policy profile's gateway (None when it is skipped).
    full: Server | None

    def all(self) -> list[Server]:
        return [self.upstream, self.bare, self.gate, *([self.full] if self.full else [])]


@contextlib.contextmanager
def servers(
    workdir: Path, helper_cpu: int | None, test_cpu: int | None, full: FullPolicySetup | None
) -> Iterator[Servers]:
    """Start the fake upstream, the bare forwarder and Lockgate (both profiles); always stop them."""
    started: list[Server] = []
    try:
        upstream_port, bare_port, gate_port = free_port(), free_port(), free_port()
        upstream_cmd = [sys.executable, "-m", "tests.benchmarks.fake_upstream", "--port", str(upstream_port)]
        upstream = start_server("upstream", upstream_cmd, upstream_port, workdir, helper_cpu)
        started.append(upstream)
        bare = start_server("bare", bare_command(bare_port, upstream_port), bare_port, workdir, test_cpu)
        started.append(bare)
        config_path = write_lockgate_config(workdir, gate_port, upstream_port)
        gate = start_server("lockgate", lockgate_command(config_path), gate_port, workdir, test_cpu)
        started.append(gate)
        full_server = None
        if full is not None:
            full_server = start_full_policy(full, workdir, upstream_port, test_cpu)
            started.append(full_server)
        yield Servers(upstream, bare, gate, full_server)
    finally:
        for server in reversed(started):
            server.stop()


def proc_status_mb(pid: int, field_name: str) -> float:
    """A ``kB`` field of ``/proc/PID/status`` (VmRSS, VmHWM) in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu_seconds() -> float:
    """User, nice and system CPU time of the whole machine so far (all CPUs)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return (int(fields[1]) + int(fields[2]) + int(fields[3])) / _CLOCK_TICKS


class CpuMeter:
    """CPU used by the server under test, the upstream, the load generator and everyone else."""

    def __init__(self, server: Server, upstream: Server) -> None:
        self.pids = {server.pid, upstream.pid}
        self.server, self.upstream = server, upstream
        self.reset()

    def reset(self) -> None:
        self.wall = time.monotonic()
        self.start_server = cpu_seconds(self.server.pid)
        self.start_upstream = cpu_seconds(self.upstream.pid)
        self.start_own = own_cpu_seconds()
        self.start_machine = machine_cpu_seconds()

    def server_cpu(self) -> float:
        return cpu_seconds(self.server.pid) - self.start_server

    def upstream_cpu(self) -> float:
        return cpu_seconds(self.upstream.pid) - self.start_upstream

    def own_cpu(self) -> float:
        return own_cpu_seconds() - self.start_own

    def other_load(self, also_ours: float = 0.0) -> float:
        """Cores' worth of CPU that other processes used since the last reset (``also_ours``: CPU
        seconds of another process working for the target, such as Redis, not counted as other)."""
        ours = self.own_cpu() + also_ours + sum(cpu_seconds(pid) - start for pid, start in self._starts())
        elapsed = time.monotonic() - self.wall
        return max(0.0, (machine_cpu_seconds() - self.start_machine - ours) / elapsed) if elapsed else 0.0

    def _starts(self) -> list[tuple[int, float]]:
        if self.server is self.upstream:
            return [(self.server.pid, self.start_server)]
        return [(self.server.pid, self.start_server), (self.upstream.pid, self.start_upstream)]


class RedisMeter:
    """CPU time of the Redis server and the scripts it ran between readings (always 0 for a target
    that does not use it)."""

    def __init__(self, used: bool) -> None:
        self.used = used
        self.at: float | None = None
        self.scripts_at = 0
        #: Scripts Redis ran between the last two laps.
        self.scripts = 0

    async def lap(self) -> float:
        """CPU seconds Redis used since the last lap (the first lap only starts the count)."""
        if not self.used:
            return 0.0
        now, scripts = await full_policy.redis_usage()
        used, self.at = (0.0 if self.at is None else now - self.at), now
        self.scripts, self.scripts_at = scripts - self.scripts_at, scripts
        return used


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class Target:
    """A server the load generator measures, and the samples gathered from it."""

    server: Server
    samples: Samples
    #: Answers the target gave so far (any status), warm-ups and checks included.
    answered: int = 0
    #: The target works with the Redis server, whose CPU time is then measured too.
    uses_redis: bool = False

    def count(self, *results: LoadResult) -> None:
        self.answered += sum(sum(result.statuses.values()) for result in results)

    @property
    def label(self) -> str:
        return self.samples.label

    def requests(self) -> tuple[bytes, bytes]:
        """The bytes of a non-streamed and of a streamed chat completion request."""
        headers = {"Authorization": f"Bearer {API_KEY}"}
        return (
            build_request(HOST, self.server.port, PATH, chat_body(stream=False), headers),
            build_request(HOST, self.server.port, PATH, chat_body(stream=True), headers),
        )


def chat_body(*, stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in one short sentence."},
        ],
    }
    if stream:
        # Asking for usage ourselves lets Lockgate forward the client's bytes unchanged, like the bare
        # forwarder does.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def wait_ready(target: Target, timeout: float = 30.0) -> None:
    """Wait until the target answers a chat completion with 200."""
    plain, _ = target.requests()
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        target.server.check_alive()
        try:
            result = await run_load(
                HOST, target.server.port, plain, concurrency=1, max_requests=1, max_seconds=5
            )
        except OSError as exc:
            last = str(exc)
        else:
            target.count(result)
            if result.statuses.get(200):
                return
            last = f"answers {result.statuses}"
        await asyncio.sleep(0.1)
    raise RuntimeError(
        f"{target.label} did not answer 200 within {timeout:.0f} s ({last}):\n{target.server.log_tail()}"
    )


async def verify_answers(target: Target) -> None:
    """Check once that the target answers real completions, so no run measures error answers."""
    url = f"http://{HOST}:{target.server.port}{PATH}"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=chat_body(stream=False), headers=headers) as response:
            body = await response.read()
        target.answered += 1
        if response.status != 200 or b'"usage"' not in body:
            raise RuntimeError(f"{target.label} answered {response.status}: {body[:300]!r}")
        async with session.post(url, data=chat_body(stream=True), headers=headers) as response:
            body = await response.read()
        target.answered += 1
        if response.status != 200 or b'"error"' in body or not body.rstrip().endswith(b"data: [DONE]"):
            raise RuntimeError(f"{target.label} streamed {response.status}: {body[-300:]!r}")


async def measure(target: Target, upstream: Server, plan: Plan, round_no: int) -> None:
    """One round on one target: warm-up, concurrency 1, concurrency 16, streams."""
    samples, port, limit = target.samples, target.server.port, plan.max_requests
    plain, streamed = target.requests()
    warm = await run_load(
        HOST, port, plain, concurrency=CONCURRENCY, max_requests=limit, max_seconds=plan.warmup_seconds
    )
    warm_streams = await run_load(
        HOST, port, streamed, concurrency=1, max_requests=limit, max_seconds=plan.warmup_seconds / 4
    )

    redis = RedisMeter(target.uses_redis)
    await redis.lap()
    meter = CpuMeter(target.server, upstream)
    c1 = await run_load(HOST, port, plain, concurrency=1, max_requests=limit, max_seconds=plan.c1_seconds)
    other = meter.other_load(await redis.lap())
    if target.uses_redis and c1.count:
        samples.redis_trips_c1.append(redis.scripts / c1.count)

    meter.reset()
    c16 = await run_load(
        HOST, port, plain, concurrency=CONCURRENCY, max_requests=limit, max_seconds=plan.c16_seconds
    )
    redis_used = await redis.lap()
    if c16.count:
        samples.cpu.append(meter.server_cpu() / c16.count)
        samples.loadgen_cpu.append(meter.own_cpu() / c16.count)
        if target.server is not upstream:
            samples.upstream_cpu.append(meter.upstream_cpu() / c16.count)
        if target.uses_redis:
            samples.redis_cpu.append(redis_used / c16.count)
            samples.redis_trips_c16.append(redis.scripts / c16.count)
    other = max(other, meter.other_load(redis_used))

    meter.reset()
    stream = await run_load(
        HOST, port, streamed, concurrency=1, max_requests=limit, max_seconds=plan.stream_seconds
    )
    samples.other_load.append(max(other, meter.other_load(await redis.lap())))
    target.count(warm, warm_streams, c1, c16, stream)

    samples.c1.merge(c1)
    samples.c16.merge(c16)
    samples.rps.append(c16.rps)
    samples.stream.merge(stream)
    errors = c1.errors + c16.errors + stream.errors
    progress(
        f"  round {round_no}  {target.label:<20} c=1 p50 {ms(median(c1.latencies)):6.3f} ms   "
        f"c={CONCURRENCY} {c16.rps:7,.0f} req/s, {samples.cpu[-1] * 1e6 if c16.count else 0:5.0f} µs CPU/req   "
        f"stream TTFB p50 {ms(median(stream.first_bytes)):6.3f} ms   other load {samples.other_load[-1]:4.0%}"
        + (f"   errors {errors}" if errors else "")
    )


async def profile_lockgate(target: Target, out: Path, seconds: float) -> str:
    """Sample Lockgate with py-spy while it serves concurrency 16; returns a line saying what happened."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        return "profile skipped: py-spy is not installed (pip install py-spy)"
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
    command = [py_spy, "record", "--pid", str(target.server.pid), "--duration", str(round(seconds))]
    command += ["--rate", "250", "--format", fmt, "--output", str(out), "--nonblocking"]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    plain, _ = target.requests()
    try:
        await asyncio.sleep(0.5)
        result = await run_load(
            HOST, target.server.port, plain, concurrency=CONCURRENCY, max_requests=10**6, max_seconds=seconds
        )
        target.answered += sum(result.statuses.values())
        _, stderr = await asyncio.wait_for(process.communicate(), seconds + 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        return f"profile failed: {stderr.decode(errors='replace').strip()[-300:]}"
    return f"profile of Lockgate at concurrency {CONCURRENCY} written to {out} ({fmt})"


async def count_instructions(upstream: Server, workdir: Path) -> dict[str, float]:
    """Instructions per request of the bare forwarder and of Lockgate, each run anew under callgrind."""
    out_dir = workdir / "callgrind"
    out_dir.mkdir()
    counts: dict[str, float] = {}
    for name, label in (("bare", "bare forwarder"), ("lockgate", "Lockgate")):
        port = free_port()
        if name == "bare":
            command = bare_command(port, upstream.port)
        else:
            command = lockgate_command(
                write_lockgate_config(workdir, port, upstream.port), through_python=True
            )
        server = start_server(
            f"{name}-callgrind", [*instructions.valgrind_prefix(out_dir, name), *command], port, workdir, None
        )
        try:
            target = Target(server, Samples(label))
            await wait_ready(target, timeout=300)
            plain, _ = target.requests()
            counts[name] = await instructions.instructions_per_request(
                server.pid, HOST, port, plain, out_dir, name, CONCURRENCY
            )
        finally:
            server.stop()
        progress(f"  {label}: {counts[name] / 1000:,.0f}k instructions per request")
    return counts


async def plan_full_policy(
    workdir: Path, redis_url: str = full_policy.REDIS_URL
) -> tuple[FullPolicySetup | None, str]:
    """The full policy profile's setup, or None and why it is skipped (Redis is not running)."""
    problem = await full_policy.redis_unreachable(redis_url)
    if problem is not None:
        message = f"Redis at {redis_url} is not reachable: {problem}"
        progress(f"full policy profile skipped: {message}")
        return None, message
    return FullPolicySetup(full_policy.key_name(), workdir / full_policy.DATABASE_FILE), ""


async def verify_full_policy(target: Target, setup: FullPolicySetup) -> full_policy.Evidence:
    """Check on one answer that the rate limits and the budget run, before measuring."""
    evidence = await full_policy.verify_enforced(
        target.server.port, api_key=API_KEY, body=chat_body(stream=False), name=setup.key_name, host=HOST
    )
    target.answered += 1
    headers = ", ".join(f"{name}: {value}" for name, value in sorted(evidence.rate_headers.items()))
    progress(f"full policy: {headers}; budget settled at {evidence.first_cost_nano_usd} nUSD")
    return evidence


async def finish_full_policy(target: Target, setup: FullPolicySetup, evidence: full_policy.Evidence) -> None:
    """After the run: no Redis fall-backs, then stop the gateway (which writes its queued usage
    records) and count the records against the answers it gave."""
    full_policy.check_readiness(await full_policy.readiness(target.server.port, HOST), evidence)
    target.server.stop()
    full_policy.stored_usage(setup.database, evidence)
    evidence.answered = target.answered
    evidence.budget_nano_usd = await full_policy.budget_charged(setup.key_name)
    await full_policy.drop_counters(setup.key_name)
    progress(
        f"full policy: {evidence.records:,} usage records stored for {evidence.answered:,} requests "
        f"answered ({evidence.priced:,} with a cost, ${evidence.cost_usd:.9f}); budget counter "
        f"${evidence.budget_nano_usd / 1e9:.9f}; {evidence.redis_fallbacks} Redis fall-backs"
    )


async def bench(
    plan: Plan,
    *,
    pin_cpus: bool,
    profile: Path | None,
    profile_seconds: float,
    count: bool,
    full: bool = True,
) -> Report:
    cpus = sorted(os.sched_getaffinity(0))
    pinned = pin_cpus and len(cpus) >= 2
    helper_cpu, test_cpu = (cpus[0], cpus[1]) if pinned else (None, None)
    pin(os.getpid(), helper_cpu)
    started_at = datetime.datetime.now(datetime.UTC)
    clock = time.monotonic()
    full_target: Target | None = None
    evidence: full_policy.Evidence | None = None
    skipped = "" if full else "not asked for (--no-full-policy)"
    with tempfile.TemporaryDirectory(prefix="lockgate-bench-") as workdir_name:
        workdir = Path(workdir_name)
        setup, why = await plan_full_policy(workdir) if full else (None, "")
        skipped = skipped or why
        with servers(workdir, helper_cpu, test_cpu, setup) as running:
            upstream = running.upstream
            direct = Target(upstream, Samples("direct"))
            bare_target = Target(running.bare, Samples("bare forwarder"))
            lockgate = Target(running.gate, Samples("Lockgate"))
            targets = [direct, bare_target, lockgate]
            if running.full is not None:
                full_target = Target(running.full, Samples(FULL_POLICY_LABEL), uses_redis=True)
                targets.append(full_target)
            for target in targets:
                await wait_ready(target)
                await verify_answers(target)
            if full_target is not None and setup is not None:
                evidence = await verify_full_policy(full_target, setup)
            progress(f"benchmark: {plan.rounds} round(s) of {', '.join(t.label for t in targets)}")
            for round_no in range(1, plan.rounds + 1):
                for target in targets:
                    # The upstream gets the test CPU while it is the server under test.
                    pin(upstream.pid, test_cpu if target is direct else helper_cpu)
                    await measure(target, upstream, plan, round_no)
            pin(upstream.pid, helper_cpu)
            for server in running.all():
                server.check_alive()
            rss = {
                server.name: (proc_status_mb(server.pid, "VmRSS"), proc_status_mb(server.pid, "VmHWM"))
                for server in running.all()
            }
            if profile is not None:
                progress(await profile_lockgate(lockgate, profile, profile_seconds))
                if full_target is not None:
                    full_out = profile.with_name(f"{profile.stem}-full{profile.suffix}")
                    progress(await profile_lockgate(full_target, full_out, profile_seconds))
            if full_target is not None and setup is not None and evidence is not None:
                await finish_full_policy(full_target, setup, evidence)
            counts: dict[str, float] = {}
            if count and instructions.available():
                progress("counting instructions per request under callgrind")
                counts = await count_instructions(upstream, workdir)
            elif count:
                progress("instruction counts skipped: valgrind is not installed (apt-get install valgrind)")
    duration = time.monotonic() - clock
    report = Report(
        direct.samples, bare_target.samples, lockgate.samples, plan, pinned, rss, started_at, duration
    )
    report.instructions = counts
    if full_target is not None and evidence is not None:
        report.full = full_target.samples
        report.full_evidence = evidence.lines()
    report.full_skipped = skipped
    return report


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.run", description="Benchmark Lockgate against a bare forwarder."
    )
    parser.add_argument("--quick", action="store_true", help="one short round (about 45 s) instead of three")
    parser.add_argument("--rounds", type=int, help="number of rounds (default 3, or 1 with --quick)")
    parser.add_argument("--write", metavar="PATH", help="write the results into this markdown file")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the processes to CPUs")
    parser.add_argument(
        "--no-full-policy",
        action="store_true",
        help="leave out the full policy profile (Redis rate limits, budget and usage log)",
    )
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="also sample Lockgate with py-spy (.svg, .json, raw); the full policy profile's worker "
        "goes to the same name with -full before the suffix",
    )
    parser.add_argument(
        "--profile-seconds", type=float, default=15.0, help="length of the profile in seconds"
    )
    parser.add_argument(
        "--instructions",
        action=argparse.BooleanOptionalAction,
        help="count instructions per request under valgrind when it is installed (about a minute; steady "
        "on a busy machine); on by default, off with --quick",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=max(1, args.rounds))

    # SIGTERM unwinds like Ctrl-C, so the servers are always stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    run = bench(
        plan,
        pin_cpus=not args.no_pin,
        profile=Path(args.profile).resolve() if args.profile else None,
        profile_seconds=args.profile_seconds,
        count=not args.quick if args.instructions is None else args.instructions,
        full=not args.no_full_policy,
    )
    try:
        import uvloop
    except ImportError:
        report = asyncio.run(run)
    else:
        report = uvloop.run(run)
    results = report.markdown()
    print(results)
    if args.write:
        write_doc(Path(args.write), results)
        progress(f"results written to {args.write}")
    missed = report.missed_goals()
    if missed:
        progress("goals missed: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
