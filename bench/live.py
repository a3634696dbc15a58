"""`python -m bench.live`: from a commit in one process to the SSE frame a server in
another process sends for it (issue 10, part 3).

Writer A (`bench._live_writer`) appends paced events to one session; server B
(`bench._api_server`, no workers) streams that session to one client here. Each
delay is the client's wall clock at the frame minus A's just after its commit
returned (one machine, one clock). Modes, each on a fresh database and homes, run
in rotation `--rounds` times, samples pooled:

| mode | store | how B's broadcaster learns of A's commit |
|---|---|---|
| `pg-notify` | PostgreSQL, two homes | NOTIFY, then the coalescing wait (50 ms, as shipped) |
| `pg-notify-0` | the same | NOTIFY, coalescing off: the wake path alone |
| `pg-poll` | the same, B without LISTEN | its poll, every 0.5 s (the baseline) |
| `sqlite` | one home, two processes | its poll, every 0.5 s |
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import (
    ROOT,
    machine,
    percentile,
    process_cpu_s,
    source,
    start_url_process,
    terminate,
    write_json,
)

MODES = ("pg-notify", "pg-notify-0", "pg-poll", "sqlite")
BASELINE = "pg-poll"


@dataclass
class Run:
    """One mode's samples (pooled over rounds)."""

    delays_ms: list[float] = field(default_factory=list)
    server_cpu_s: float = 0.0
    wall_s: float = 0.0

    def summary(self) -> dict[str, float]:
        """Percentiles of the delays, and B's CPU per second of writing."""
        d = self.delays_ms
        return {
            "events": len(d),
            "p50_ms": percentile(d, 0.5),
            "p95_ms": percentile(d, 0.95),
            "p99_ms": percentile(d, 0.99),
            "max_ms": max(d, default=float("nan")),
            "mean_ms": statistics.fmean(d) if d else float("nan"),
            "server_cpu_pct": 100 * self.server_cpu_s / self.wall_s if self.wall_s else 0.0,
        }


def child_env(home: Path) -> dict[str, str]:
    """The environment of A and B: no NEXUS_* of the caller; nothing probes Ollama."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update(NEXUS_HOME=str(home), NEXUS_OLLAMA_URL="http://127.0.0.1:9/v1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return env


async def wait_healthy(http: aiohttp.ClientSession, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{url}/healthz") as resp:
                if resp.status == 200:
                    return
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"server {url} not healthy after {timeout_s:g} s")


async def stream(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    sid: str,
    last_seq: int,
    arrivals: dict[int, float],
    first: asyncio.Event,
) -> None:
    """Read the session's stream, noting when each journal frame's data arrived."""
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}
    async with http.get(f"{url}/api/v1/sessions/{sid}/stream", headers=headers) as resp:
        resp.raise_for_status()
        seq, journal = 0, False
        async for raw in resp.content:
            line = raw.rstrip(b"\r\n")
            if line.startswith(b"id: "):
                seq = int(line[4:])
            elif line.startswith(b"event: "):
                journal = line == b"event: journal"
            elif line.startswith(b"data: ") and journal:
                arrivals[seq] = time.time()
                first.set()
                if seq >= last_seq:
                    return


async def run_mode(
    mode: str, args: argparse.Namespace, pg_url: str | None, work: Path, into: Run
) -> None:
    """One run of `mode`: start B, subscribe, let A write, pool the delays."""
    tag = uuid.uuid4().hex[:8]
    writer_home, server_home = work / f"a-{tag}", work / f"b-{tag}"
    if mode == "sqlite":
        writer_home = server_home
    url = None
    if mode != "sqlite":
        assert pg_url is not None
        url = create_database(pg_url, f"live_{tag}")
    cmd = [sys.executable, "-m", "bench._api_server", "--home", str(server_home), "--no-workers"]
    if url:
        cmd += ["--database-url", url]
    if mode == "pg-poll":
        cmd += ["--no-listen"]
    if mode == "pg-notify-0":
        cmd += ["--coalesce-s", "0"]
    server, base = start_url_process(
        cmd, timeout_s=60, env=child_env(server_home), stderr=subprocess.DEVNULL
    )
    out = work / f"commits-{tag}.json"
    wcmd = [sys.executable, "-m", "bench._live_writer", "--home", str(writer_home)]
    wcmd += ["--events", str(args.events), "--interval-ms", str(args.interval_ms)]
    wcmd += ["--out", str(out), *(["--database-url", url] if url else [])]
    writer = subprocess.Popen(
        wcmd,
        cwd=ROOT,
        env=child_env(writer_home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdin is not None and writer.stdout is not None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
            await wait_healthy(http, base, 60)
            token = (server_home / "api-token").read_text().strip()
            sid = (await asyncio.to_thread(writer.stdout.readline)).strip()
            arrivals: dict[int, float] = {}
            first = asyncio.Event()
            last_seq = args.events + 1  # session.created, then the events
            reader = asyncio.create_task(stream(http, base, token, sid, last_seq, arrivals, first))
            async with asyncio.timeout(60):
                await first.wait()  # subscribed: session.created came
            cpu0, wall0 = process_cpu_s(server.pid), time.monotonic()
            writer.stdin.write("go\n")
            writer.stdin.flush()
            budget = 60 + args.events * args.interval_ms / 1000 * 3
            async with asyncio.timeout(budget):
                await reader
            into.server_cpu_s += process_cpu_s(server.pid) - cpu0
            into.wall_s += time.monotonic() - wall0
        assert await asyncio.to_thread(writer.wait, 60) == 0, f"{mode}: the writer failed"
        commits = {int(k): v for k, v in json.loads(out.read_text())["commits"].items()}
        missing = sorted(set(commits) - set(arrivals))
        assert not missing, f"{mode}: no frame for seqs {missing[:10]}"
        into.delays_ms.extend((arrivals[s] - t) * 1000 for s, t in sorted(commits.items()))
    finally:
        terminate(writer, grace_s=5)
        terminate(server, grace_s=20)
        for pipe in (writer.stdin, writer.stdout, server.stdout):
            if pipe is not None:
                pipe.close()


def create_database(admin_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def report(runs: dict[str, Run]) -> dict[str, Any]:
    """Print the table; return the results."""
    base = runs[BASELINE].summary() if BASELINE in runs else None
    print(f"\n{'mode':<12} {'events':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'p50 vs poll':>11} {'B cpu %':>8}")  # fmt: skip
    results = {}
    for mode, run in runs.items():
        s = run.summary()
        ratio = s["p50_ms"] / base["p50_ms"] if base else float("nan")
        s["p50_vs_poll"] = ratio
        results[mode] = s
        print(
            f"{mode:<12} {s['events']:>6} {s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} "
            f"{s['p99_ms']:>8.1f} {s['max_ms']:>8.1f} {ratio:>10.2f}x {s['server_cpu_pct']:>8.1f}"
        )
    return results


async def main_async(args: argparse.Namespace) -> None:
    from tests.peers.postgres import PostgresServer, available

    modes = [m for m in MODES if not args.only or m in args.only.split(",")]
    pg = None
    work = Path(tempfile.mkdtemp(prefix="nexus-bench-live-"))
    try:
        if any(m.startswith("pg") for m in modes):
            if not available():
                raise SystemExit("PostgreSQL 15 binaries are not installed (scripts/test does)")
            pg = PostgresServer(Path("/tmp") / f"nexus-pg-bench-live-{os.getpid()}")
            pg.start()
        runs = {m: Run() for m in modes}
        for r in range(args.rounds):
            order = modes[r % len(modes) :] + modes[: r % len(modes)]  # rotate
            for mode in order:
                t0 = time.monotonic()
                await run_mode(mode, args, pg.url() if pg else None, work, runs[mode])
                print(f"round {r + 1} {mode}: {time.monotonic() - t0:.1f} s", flush=True)
        results = report(runs)
        path = write_json(
            "live",
            {
                "machine": machine(),
                "source": source(),
                "options": vars(args),
                "results": results,
            },
        )
        print(f"\nwritten to {path.relative_to(ROOT)}")
    finally:
        if pg is not None:
            pg.stop()
            shutil.rmtree(pg.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__)
    p.add_argument("--events", type=int, default=300, help="events per run (default 300)")
    p.add_argument("--interval-ms", type=float, default=20.0, help="mean pause between commits")
    p.add_argument("--rounds", type=int, default=2, help="runs of each mode (default 2)")
    p.add_argument("--only", help=f"comma-separated modes of {', '.join(MODES)}")
    p.add_argument("--quick", action="store_true", help="1 round of 100 events")
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.rounds = 100, 1
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
