"""What the benchmarks share: the peer LLM process, the timing harness, statistics.

The peer (`tests/peers/openai_server.py`) runs in its own process so that its
CPU time does not count against the client under test; `/proc` gives its CPU
time separately, as a check that every scenario asks the same of it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

RunOne = Callable[[int], Awaitable[None]]
"""One complete agent run; the argument is a run number unique within the process."""


def start_url_process(
    cmd: list[str], *, timeout_s: float, **popen: Any
) -> tuple[subprocess.Popen[str], str]:
    """Start a server that prints its base URL as its first line; return both.

    Raises `RuntimeError` (after terminating it) if no URL comes within `timeout_s`.
    """
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, **popen)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.startswith("http://"):
        terminate(proc, grace_s=5)
        proc.stdout.close()
        raise RuntimeError(f"{cmd[2] if len(cmd) > 2 else cmd[0]} did not start (printed {line!r})")
    return proc, line


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process has used, all its threads (Linux
    `/proc`); NaN once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # Fields 14 and 15 of stat(5) (utime, stime); [0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def terminate(proc: subprocess.Popen[Any], *, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after `grace_s`."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class PeerProcess:
    """`python -m tests.peers.openai_server` in a child process, on a free loopback port.

    Use as a context manager; `url` is the OpenAI base URL (`http://127.0.0.1:PORT/v1`).
    """

    def __init__(self, *, latency_ms: float = 0, start_timeout_s: float = 20.0) -> None:
        self.latency_ms = latency_ms
        self.start_timeout_s = start_timeout_s
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> PeerProcess:
        cmd = [sys.executable, "-m", "tests.peers.openai_server", "--host", "127.0.0.1"]
        cmd += ["--port", "0", "--latency-ms", str(self.latency_ms)]
        self._proc, self.url = start_url_process(
            cmd, timeout_s=self.start_timeout_s, stderr=subprocess.PIPE
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int:
        """The peer's process id."""
        assert self._proc is not None
        return self._proc.pid

    def cpu_s(self) -> float:
        """User plus system CPU seconds the peer has used so far."""
        return process_cpu_s(self.pid)

    def close(self) -> None:
        """Terminate the peer (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        terminate(proc, grace_s=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@dataclass
class Measurement:
    """One scenario's numbers. Times in ms; `cpu_ms` is this process only."""

    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    cpu_ms: float
    peer_cpu_ms: float
    inflight: int
    concurrent_runs: int
    runs_per_s: float
    loaded_p50_ms: float
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """As plain data, without the raw samples."""
        data = asdict(self)
        data.pop("samples_ms")
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in data.items()}


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, interpolated; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


class RunCounter:
    """Hands out run numbers unique within the process (thread ids, session ids)."""

    def __init__(self) -> None:
        self._next = 0

    def take(self, n: int) -> range:
        """The next `n` run numbers."""
        start, self._next = self._next, self._next + n
        return range(start, start + n)


async def measure(
    run_one: RunOne,
    *,
    warmup: int,
    runs: int,
    inflight: int,
    concurrent_runs: int,
    peer: PeerProcess,
    counter: RunCounter,
) -> Measurement:
    """Warm up, then time `runs` sequential runs and `concurrent_runs` runs with
    `inflight` of them in flight at once (a semaphore over `asyncio.gather`)."""
    for i in counter.take(warmup):
        await run_one(i)
    gc.collect()
    samples: list[float] = []
    cpu0, peer0 = time.process_time(), peer.cpu_s()
    for i in counter.take(runs):
        t0 = time.perf_counter()
        await run_one(i)
        samples.append((time.perf_counter() - t0) * 1000)
    cpu_ms = (time.process_time() - cpu0) * 1000 / runs
    peer_cpu_ms = (peer.cpu_s() - peer0) * 1000 / runs

    gc.collect()
    gate = asyncio.Semaphore(inflight)
    loaded: list[float] = []

    async def gated(i: int) -> None:
        async with gate:
            t = time.perf_counter()
            await run_one(i)
            loaded.append((time.perf_counter() - t) * 1000)

    wall0 = time.perf_counter()
    await asyncio.gather(*(gated(i) for i in counter.take(concurrent_runs)))
    wall = time.perf_counter() - wall0
    return Measurement(
        runs=runs,
        mean_ms=statistics.fmean(samples),
        p50_ms=percentile(samples, 0.5),
        p90_ms=percentile(samples, 0.9),
        cpu_ms=cpu_ms,
        peer_cpu_ms=peer_cpu_ms,
        inflight=inflight,
        concurrent_runs=concurrent_runs,
        runs_per_s=concurrent_runs / wall,
        loaded_p50_ms=percentile(loaded, 0.5),
        samples_ms=samples,
    )


def pooled(a: Measurement, b: Measurement) -> Measurement:
    """Two measurements of one scenario (start and end of a run) as one."""
    samples = a.samples_ms + b.samples_ms
    return Measurement(
        runs=a.runs + b.runs,
        mean_ms=statistics.fmean(samples),
        p50_ms=percentile(samples, 0.5),
        p90_ms=percentile(samples, 0.9),
        cpu_ms=(a.cpu_ms + b.cpu_ms) / 2,
        peer_cpu_ms=(a.peer_cpu_ms + b.peer_cpu_ms) / 2,
        inflight=a.inflight,
        concurrent_runs=a.concurrent_runs + b.concurrent_runs,
        runs_per_s=(a.runs_per_s + b.runs_per_s) / 2,
        loaded_p50_ms=(a.loaded_p50_ms + b.loaded_p50_ms) / 2,
        samples_ms=samples,
    )


def time_command(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Wall ms of one run of a command.

    Raises:
        RuntimeError: the command failed.
    """
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = (time.perf_counter() - t0) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.decode()[-500:]}")
    return elapsed


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "executable": sys.executable,
    }


def source() -> dict[str, Any]:
    """The commit measured, and which files under src/ differ from it (a dirty tree)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.rstrip() if done.returncode == 0 else ""  # porcelain lines start " M"

    dirty = git("status", "--porcelain", "--", "src")
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip() or None,
        "src_changes": [line[3:] for line in dirty.splitlines()],
    }


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write `bench/results/NAME.json` (the folder is gitignored); returns its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path
