"""Runs per second as workers are added, and one worker with 1,000 sessions in flight.

Every session runs the same agent against the peer LLM (`tests/peers/openai_server.py`,
its own process): an LLM call answered with a `list_files` call, the tool step, an
LLM call answered "done". The sessions run in `nexus worker` processes; this process
only journals them, queues them and reads the session index. Three parts:

    table       runs/s with 50 and 500 sessions in flight, at 0 ms and 200 ms of
                LLM latency: SQLite with one worker, PostgreSQL with 1, 2 and 3
                worker processes (the in-flight sessions split between them). Each
                case queues its whole batch first, then starts its workers; runs/s
                is taken over the steady part (the 10th to the 90th percentile of
                the completions), and compared with one PostgreSQL worker.
    big         one worker, 1,000 sessions in flight at once (a 3 s LLM keeps them
                all in flight): the wall time from the first submission to the last
                completion, against the ideal (the submission time plus the
                sessions' own LLM time, 2 x 3 s), and the worker's peak RSS.
    agent-step  bench.agent_step's NEXUS durable case (b) on each store, in this
                process: the time it adds to a run over the hand-written loop (a),
                PostgreSQL's against SQLite's.

PostgreSQL is a throwaway cluster (`tests/peers/postgres.py`) with fsync off.

Run from the repository root:

    .venv/bin/python -m bench.scale              # the whole table, ~6 minutes on 2 cores
    .venv/bin/python -m bench.scale --quick      # smoke run, ~2 minutes
    .venv/bin/python -m bench.scale --only big   # one part
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import RESULTS, PeerProcess, machine, percentile, source, write_json
from bench._kill_sessions import providers_json
from bench._scale_cluster import (
    LLM_CALLS,
    Submitter,
    Worker,
    finished_rows,
    open_runtime,
    prepare_home,
    script_peer,
    share_audit_key,
    wait_finished,
)
from bench._scale_steps import agent_step_on_both
from nexus import events as ev

TARGET_TWO_WORKERS = 1.6  # x one PostgreSQL worker's runs/s at 0 ms
TARGET_BIG_RATIO = 1.3  # x the ideal wall time
TARGET_BIG_RSS_MB = 1024
TARGET_PG_ADDED = 2.0  # x the SQLite store's added ms per durable run
PARTS = ("table", "big", "agent-step")


@dataclass(frozen=True)
class Case:
    """One row of the table."""

    store: str  # "sqlite" or "postgres"
    workers: int
    inflight: int
    latency_ms: float
    sessions: int

    @property
    def name(self) -> str:
        """A short id, also the batch label and the folder of its homes."""
        return f"{self.store}-w{self.workers}-f{self.inflight}-l{self.latency_ms:g}"

    def concurrencies(self) -> list[int]:
        """The in-flight sessions split between the workers (they add up)."""
        share, extra = divmod(self.inflight, self.workers)
        return [share + (i < extra) for i in range(self.workers)]


class Postgres:
    """The throwaway cluster, with a fresh database per case."""

    def __init__(self, root: Path) -> None:
        from tests.peers.postgres import PostgresServer

        self.server = PostgresServer(root)
        self._made = 0

    def start(self) -> None:
        """initdb and start (fsync off)."""
        self.server.start()

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        import psycopg

        self._made += 1
        name = f"scale{self._made}"
        with psycopg.connect(self.server.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.server.url(name)

    def stop(self) -> None:
        """Fast shutdown."""
        self.server.stop()


def steady_rate(ends: list[float]) -> tuple[float, float]:
    """Runs/s between the 10th and the 90th percentile of the completion times, and
    that window's length in seconds."""
    ends = sorted(ends)
    low, high = int(len(ends) * 0.1), int(len(ends) * 0.9) - 1
    window = ends[high] - ends[low]
    return ((high - low) / window if window > 0 else float("nan")), window


def mean_in_flight(runs: list[tuple[float, float]]) -> float:
    """How many sessions ran at once on average over the steady part: each run's
    (`session.started`, end) overlap with that window, summed, over its length."""
    ends = sorted(end for _, end in runs)
    low, high = ends[int(len(ends) * 0.1)], ends[int(len(ends) * 0.9) - 1]
    if high <= low:
        return float("nan")
    busy = sum(max(0.0, min(end, high) - max(start, low)) for start, end in runs)
    return busy / (high - low)


async def _start_workers(
    case: Case, homes: list[Path], peer_url: str, url: str | None, timeout_s: float
) -> list[Worker]:
    workers = []
    try:
        for i, (home, concurrency) in enumerate(zip(homes, case.concurrencies(), strict=True)):
            workers.append(
                Worker(
                    home,
                    worker_id=f"scale-{i}",
                    concurrency=concurrency,
                    providers=providers_json(peer_url),
                    database_url=url,
                )
            )
        for w in workers:
            await asyncio.to_thread(w.wait_ready, timeout_s)
    except BaseException:
        for w in workers:
            w.close()
        raise
    return workers


async def run_case(
    case: Case, root: Path, peer: PeerProcess, pg: Postgres | None, timeout_s: float
) -> dict[str, Any]:
    """Queue the batch, start the workers, wait for every session, read the rates."""
    url = pg.new_database() if pg is not None else None
    homes = [root / case.name / f"home-{i}" for i in range(case.workers)]
    rt = open_runtime(homes[0], peer.url, url)
    try:
        t0 = time.perf_counter()
        async with Submitter(rt) as submitter:
            await submitter.submit(case.sessions, label=case.name)
        submit_s = time.perf_counter() - t0
        for home in homes[1:]:
            prepare_home(home)
            share_audit_key(homes[0], home)
        started = time.time()
        workers = await _start_workers(case, homes, peer.url, url, timeout_s)
        try:
            cpu0, peer0 = sum(w.cpu_s() for w in workers), peer.cpu_s()
            machine0 = machine_busy_s()
            await wait_finished(rt, case.sessions, timeout_s)
            elapsed = time.time() - started
            cpu = sum(w.cpu_s() for w in workers) - cpu0
            peer_cpu = peer.cpu_s() - peer0
            machine = machine_busy_s() - machine0
            rss = max(w.peak_rss_mb() for w in workers)
        finally:
            for w in workers:
                w.close()
        rows = finished_rows(rt, case.name, case.sessions)
        started_at = [
            next(e.ts for e in rt.journal.events(r.id) if e.kind == ev.SESSION_STARTED)
            for r in rows
        ]
    finally:
        await rt.aclose()
    rate, window = steady_rate([r.updated_at for r in rows])
    runs = [(start, r.updated_at) for start, r in zip(started_at, rows, strict=True)]
    return {
        "case": case.name,
        "store": case.store,
        "workers": case.workers,
        "inflight": case.inflight,
        "worker_concurrency": case.concurrencies(),
        "latency_ms": case.latency_ms,
        "sessions": case.sessions,
        "runs_per_s": round(rate, 1),
        "steady_window_s": round(window, 2),
        "mean_in_flight": round(mean_in_flight(runs), 1),
        "submit_s": round(submit_s, 2),
        "start_to_last_s": round(max(r.updated_at for r in rows) - started, 2),
        "worker_cores": round(cpu / elapsed, 2),
        "peer_cores": round(peer_cpu / elapsed, 2),
        "machine_cores": round(machine / elapsed, 2),
        "worker_peak_rss_mb": round(rss, 1),
    }


def machine_busy_s() -> float:
    """CPU seconds this machine has spent busy (every process, every core: the
    workers, PostgreSQL, the peer and this benchmark), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def table_cases(args: argparse.Namespace) -> list[Case]:
    """Every row, in the order they run: per latency and in-flight count, the
    PostgreSQL workers first (1, 2, 3), then SQLite."""
    found = []
    for latency in args.latencies:
        for inflight in args.inflight:
            sessions = max(inflight * args.rounds, args.min_sessions)
            for workers in args.workers:
                found.append(Case("postgres", workers, inflight, latency, sessions))
            found.append(Case("sqlite", 1, inflight, latency, sessions))
    return found


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's runs/s against one PostgreSQL worker's at the same load."""
    one = {
        (r["inflight"], r["latency_ms"]): r["runs_per_s"]
        for r in rows
        if r["store"] == "postgres" and r["workers"] == 1
    }
    for r in rows:
        base = one.get((r["inflight"], r["latency_ms"]))
        r["ratio_vs_pg_1_worker"] = round(r["runs_per_s"] / base, 3) if base else None
    return rows


async def run_big(args: argparse.Namespace, root: Path, peer: PeerProcess) -> dict[str, Any]:
    """One worker (SQLite), every session submitted at once, all in flight."""
    n = args.big_sessions
    home = root / "big" / "home-0"
    rt = open_runtime(home, peer.url, None)
    try:
        worker = Worker(
            home,
            worker_id="scale-big",
            concurrency=n,
            providers=providers_json(peer.url),
            database_url=None,
        )
        try:
            await asyncio.to_thread(worker.wait_ready, args.case_timeout)
            t0 = time.time()
            async with Submitter(rt) as submitter:
                ids = await submitter.submit(n, label="big")
            submit_s = time.time() - t0
            await wait_finished(rt, n, args.case_timeout)
            rss = worker.peak_rss_mb()
        finally:
            worker.close()
        rows = finished_rows(rt, "big", n)
        journals = [rt.journal.events(sid) for sid in ids]
    finally:
        await rt.aclose()
    wall = max(r.updated_at for r in rows) - t0
    ideal = submit_s + LLM_CALLS * args.big_latency_ms / 1000
    return {
        "sessions": n,
        "latency_ms": args.big_latency_ms,
        "worker_concurrency": n,
        "submit_s": round(submit_s, 2),
        "wall_s": round(wall, 2),
        "ideal_s": round(ideal, 2),
        "ratio": round(wall / ideal, 3),
        "peak_llm_calls_in_flight": _llm_calls_in_flight(journals),
        "worker_peak_rss_mb": round(rss, 1),
        "phases_ms": phases(journals),
    }


PHASES = (
    ("queued", ev.SESSION_CREATED, ev.SESSION_STARTED),
    ("to 1st LLM call", ev.SESSION_STARTED, ev.LLM_REQUEST),
    ("1st LLM call", ev.LLM_REQUEST, ev.LLM_RESPONSE),
    ("tool step", ev.LLM_RESPONSE, ev.LLM_REQUEST),
    ("2nd LLM call", ev.LLM_REQUEST, ev.LLM_RESPONSE),
    ("to completed", ev.LLM_RESPONSE, ev.SESSION_COMPLETED),
)


def phases(journals: list[list[Any]]) -> dict[str, dict[str, float]]:
    """Where each session's time went, p50 / p99 / max ms per phase: from the event
    that opens a phase to the next event of the kind that closes it."""
    found: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    for events in journals:
        at = 0
        for name, opens, closes in PHASES:
            start = next(i for i in range(at, len(events)) if events[i].kind == opens)
            at = next(i for i in range(start + 1, len(events)) if events[i].kind == closes)
            found[name].append((events[at].ts - events[start].ts) * 1000)
    return {
        name: {q: round(percentile(v, f), 1) for q, f in (("p50", 0.5), ("p99", 0.99))}
        | {"max": round(max(v), 1)}
        for name, v in found.items()
    }


def _llm_calls_in_flight(journals: list[list[Any]]) -> int:
    """The most LLM calls open at once, from `llm.request` to its outcome."""
    marks = []
    for events in journals:
        for e in events:
            if e.kind == ev.LLM_REQUEST:
                marks.append((e.ts, 1))
            elif e.kind in (ev.LLM_RESPONSE, ev.LLM_FAILED):
                marks.append((e.ts, -1))
    open_now = peak = 0
    for _, step in sorted(marks):
        open_now += step
        peak = max(peak, open_now)
    return peak


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets met or missed, with the numbers that decide them."""
    found = []
    rows = data.get("table") or []
    for r in rows:
        if r["store"] == "postgres" and r["workers"] == 2 and r["latency_ms"] == 0:
            ratio = r["ratio_vs_pg_1_worker"]
            found.append(
                {
                    "name": f"PostgreSQL, {r['inflight']} in flight, 0 ms: 2 workers >= "
                    f"{TARGET_TWO_WORKERS}x one worker's runs/s",
                    "ok": ratio is not None and ratio >= TARGET_TWO_WORKERS,
                    "detail": f"x{ratio} ({r['runs_per_s']} runs/s)",
                }
            )
    big = data.get("big")
    if big is not None:
        found.append(
            {
                "name": f"{big['sessions']:,} in flight within {TARGET_BIG_RATIO}x the ideal",
                "ok": big["ratio"] <= TARGET_BIG_RATIO,
                "detail": f"{big['wall_s']} s against {big['ideal_s']} s (x{big['ratio']})",
            }
        )
        found.append(
            {
                "name": f"{big['sessions']:,} in flight in under {TARGET_BIG_RSS_MB} MB",
                "ok": big["worker_peak_rss_mb"] < TARGET_BIG_RSS_MB,
                "detail": f"peak RSS {big['worker_peak_rss_mb']} MB",
            }
        )
    step = data.get("agent_step")
    if step is not None:
        found.append(
            {
                "name": f"PostgreSQL's added ms per durable run <= {TARGET_PG_ADDED}x SQLite's",
                "ok": step["ratio"] <= TARGET_PG_ADDED,
                "detail": f"+{step['added_ms_postgres']} ms against "
                f"+{step['added_ms_sqlite']} ms (x{step['ratio']})",
            }
        )
    return found


def print_report(data: dict[str, Any]) -> None:
    """The tables on stdout (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=150)
    rows = data.get("table")
    if rows:
        table = Table(title="runs/s over the steady part (10th-90th percentile of completions)")
        for col in (
            "store",
            "workers",
            "in flight",
            "LLM ms",
            "sessions",
            "runs/s",
            "x 1 PG\nworker",
            "mean\nin flight",
            "worker\ncores",
            "peer\ncores",
            "machine\ncores",
            "peak RSS\nMB",
        ):
            table.add_column(col, justify="left" if col == "store" else "right")
        for r in rows:
            ratio = r["ratio_vs_pg_1_worker"]
            table.add_row(
                r["store"],
                str(r["workers"]),
                str(r["inflight"]),
                f"{r['latency_ms']:g}",
                str(r["sessions"]),
                f"{r['runs_per_s']:.1f}",
                "-" if ratio is None else f"{ratio:.2f}",
                f"{r['mean_in_flight']:.1f}",
                f"{r['worker_cores']:.2f}",
                f"{r['peer_cores']:.2f}",
                f"{r.get('machine_cores', float('nan')):.2f}",
                f"{r['worker_peak_rss_mb']:.0f}",
            )
        console.print(table)
        console.print(
            "in flight = the workers' concurrency, split between them; mean in flight = "
            "how many ran at once on average; "
            "cores = CPU seconds per wall second (all workers together; machine: every "
            f"process, of {os.cpu_count()}). PostgreSQL: "
            "a throwaway cluster on this machine, fsync off."
        )
    big = data.get("big")
    if big is not None:
        console.print(
            f"\none worker, {big['sessions']:,} sessions in flight at {big['latency_ms']:g} ms: "
            f"wall {big['wall_s']} s, ideal {big['ideal_s']} s (submission {big['submit_s']} s "
            f"+ {LLM_CALLS} x {big['latency_ms'] / 1000:g} s), x{big['ratio']}; "
            f"at most {big['peak_llm_calls_in_flight']} LLM calls in flight; "
            f"worker peak RSS {big['worker_peak_rss_mb']} MB"
        )
    step = data.get("agent_step")
    if step is not None:
        console.print(
            f"\nagent_step (b) NEXUS durable, p50 ms added over (a) {step['baseline_p50_ms']} ms: "
            f"SQLite +{step['added_ms_sqlite']}, PostgreSQL +{step['added_ms_postgres']} "
            f"(x{step['ratio']}); {step['runs']} sequential runs per store"
        )
    for t in data["targets"]:
        mark = {True: "[green]PASS[/]", False: "[red]MISS[/]"}[t["ok"]]
        console.print(f"{mark} {t['name']}: {t['detail']}")


def _numbers(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--latencies", type=_numbers, default=[0, 200], help="LLM ms, comma-separated")
    p.add_argument("--inflight", type=_counts, default=[50, 500], help="sessions in flight")
    p.add_argument("--workers", type=_counts, default=[1, 2, 3], help="PostgreSQL worker counts")
    p.add_argument("--rounds", type=int, default=3, help="sessions per case: in-flight x this")
    p.add_argument("--min-sessions", type=int, default=600, help="...but at least this many")
    p.add_argument("--big-sessions", type=int, default=1000)
    p.add_argument("--big-latency-ms", type=float, default=3000)
    p.add_argument("--step-runs", type=int, default=200, help="agent-step sequential runs")
    p.add_argument("--only", choices=PARTS, action="append", help="one part (repeatable)")
    p.add_argument("--quick", action="store_true", help="smoke run: small batches")
    p.add_argument("--case-timeout", type=float, default=180, help="seconds per wait of a case")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.min_sessions, args.step_runs = 2, 150, 40
        args.inflight = [min(n, 100) for n in args.inflight]
        args.big_sessions = min(args.big_sessions, 300)
    args.parts = args.only or list(PARTS)
    if min(args.inflight + args.workers + [args.rounds, args.big_sessions]) < 1:
        p.error("counts must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the parts, print the tables, write bench/results/scale.json."""
    args = parse_args(argv)
    started = time.perf_counter()
    data: dict[str, Any] = {"benchmark": "scale", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-scale-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["NEXUS_HOME"] = str(tmp / "default-home")  # no ~/.nexus/nexus.toml leaks in
        os.environ.pop("NEXUS_DATABASE_URL", None)
        # Under /tmp itself: the server's socket path is limited to 107 bytes, and
        # the cluster belongs to the `postgres` user, who cannot enter `tmp`.
        pg = Postgres(Path("/tmp") / f"nexus-bench-scale-pg-{os.getpid()}")
        pg.start()
        print("PostgreSQL 15 on this machine, fsync off (a throwaway cluster)", flush=True)
        try:
            if "table" in args.parts:
                rows = []
                for latency in args.latencies:
                    with PeerProcess(latency_ms=latency) as peer:
                        script_peer(peer.url)
                        for case in table_cases(args):
                            if case.latency_ms != latency:
                                continue
                            store = pg if case.store == "postgres" else None
                            row = asyncio.run(run_case(case, tmp, peer, store, args.case_timeout))
                            rows.append(row)
                            print(
                                f"{case.name:28} {row['runs_per_s']:7.1f} runs/s "
                                f"({row['start_to_last_s']} s)",
                                flush=True,
                            )
                data["table"] = with_ratios(rows)
            if "big" in args.parts:
                with PeerProcess(latency_ms=args.big_latency_ms) as peer:
                    script_peer(peer.url)
                    data["big"] = asyncio.run(run_big(args, tmp, peer))
                print(f"big: {data['big']}", flush=True)
            if "agent-step" in args.parts:
                data["agent_step"] = agent_step_on_both(args.step_runs, tmp, pg.new_database())
        finally:
            pg.stop()
            shutil.rmtree(pg.server.root, ignore_errors=True)
    data["targets"] = targets(data)
    data["machine"], data["source"] = machine(), source()
    data["options"] = {k: v for k, v in vars(args).items() if k != "only"}
    data["elapsed_s"] = round(time.perf_counter() - started, 1)
    print()
    print_report(data)
    path = write_json("scale", data)
    print(f"\nwrote {path.relative_to(RESULTS.parent.parent)} in {data['elapsed_s']} s")


if __name__ == "__main__":
    main()
