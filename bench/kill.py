"""How fast a kill stops a session, with 200 sessions live against a 200 ms LLM.

Every session runs a file-writing agent (`bench._kill_sessions`): each turn an
LLM call to the peer (`tests/peers/openai_server.py`, its own process, 200 ms
latency by default), then a `write_file` of a new file. Once all of them run,
they are killed one by one, in a random order, spaced, and each kill is timed
from the start of its `control.post` call:

    (a) no further side effect   the runner's first reaction in the journal (a step
                                 cut short, or `session.killed`): no step runs after it
    (b) session.killed           the `session.killed` event (its journal `ts`)

Two cases:

    in-process      the sessions run on a `Dispatcher` in this process: the kill is
                    handed to the runner in memory, inside `post`
    cross-process   the sessions run in `python -m nexus.cli worker`; this process
                    only posts, and the worker's poller reads the commands table
                    every `control_poll_s` (0.05 s)

Every session's files are checked against (a): none may be written after it.
Then the poll query's own cost: `store.commands_after(last_id)` on a table of
10,000 commands, which every worker runs every 50 ms. Target: p99 of (a) <= 200 ms
in both cases.

Run from the repository root:

    .venv/bin/python -m bench.kill                    # default run, ~1 minute on 2 cores
    .venv/bin/python -m bench.kill --sessions 50 --latency-ms 50   # smaller
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import (
    RESULTS,
    ROOT,
    PeerProcess,
    machine,
    percentile,
    process_cpu_s,
    source,
    terminate,
    write_json,
)
from bench._kill_sessions import (
    AGENT,
    KILLED_BY,
    Kill,
    providers_json,
    sample,
    script_peer,
    summary,
    write_agent,
)
from nexus import events as ev
from nexus.config import load_settings
from nexus.runtime.runtime import Runtime
from nexus.types import Event, SessionStatus

TARGET_A_P99_MS = 200.0
POLL_COMMANDS = 10_000
FINISHED = [s.value for s in SessionStatus if s.finished]


def _runtime(home: Path, peer_url: str, concurrency: int) -> Runtime:
    write_agent(home)
    settings = load_settings(
        home=home,
        providers=[{"name": "peer", "base_url": peer_url, "model": "m"}],
        concurrency=concurrency,
    )
    return Runtime(settings)


async def _until(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def _kill_all(rt: Runtime, ids: list[str], args: argparse.Namespace) -> list[Kill]:
    """Kill every session once it has run `--settle-s`, in a random order, spaced."""
    order = list(ids)
    random.Random(args.seed).shuffle(order)
    kills = []
    for sid in order:
        start = time.time()
        command = await rt.control.post(sid, "kill", by=KILLED_BY, reason="bench kill")
        kills.append(Kill(sid, command.id, start, time.time()))
        await asyncio.sleep(args.spacing_ms / 1000)
    return kills


async def _run_and_kill(
    rt: Runtime, ids: list[str], args: argparse.Namespace, runner_pid: int, peer_pid: int
) -> dict[str, Any]:
    """Wait until every session runs, let them settle, kill them, read the outcome.

    While they settle, the CPU (in cores) of the process that runs them and of the
    peer says how loaded the machine was when the kills came."""
    n, timeout_s = len(ids), args.case_timeout
    await _until(
        lambda: rt.store.count_sessions([SessionStatus.RUNNING.value]) == n,
        "all running",
        timeout_s,
    )
    settled = time.time()
    cpu0 = process_cpu_s(runner_pid), process_cpu_s(peer_pid)
    await asyncio.sleep(args.settle_s)
    cpu1 = process_cpu_s(runner_pid), process_cpu_s(peer_pid)
    cores = [round((b - a) / (time.time() - settled), 2) for a, b in zip(cpu0, cpu1, strict=True)]
    kills = await _kill_all(rt, ids, args)
    await _until(lambda: rt.store.count_sessions(FINISHED) == n, "all ended", timeout_s)
    samples = [
        sample(k, rt.journal.events(k.session_id), rt.workspace(k.session_id)) for k in kills
    ]
    first_kill = kills[0].start
    journals = [rt.journal.events(sid) for sid in ids]
    calls = sum(
        e.kind == ev.LLM_REQUEST and settled <= e.ts < first_kill for es in journals for e in es
    )
    result = summary(samples, first_kill - settled, calls)
    tool_ms = [ms for es in journals for ms in _tool_steps_ms(es, settled, first_kill)]
    result["tool_step_ms"] = {
        "p50": round(percentile(tool_ms, 0.5), 2),
        "p99": round(percentile(tool_ms, 0.99), 2),
    }
    result["llm_calls_per_s_ideal"] = round(n / (args.latency_ms / 1000), 1)
    result["kill_phase_s"] = round(kills[-1].start - first_kill, 2)
    result["runner_cores"], result["peer_cores"] = cores
    return result


def _tool_steps_ms(events: list[Event], start: float, end: float) -> list[float]:
    """From `tool.call` to its `tool.result`, for the calls made in [start, end): a
    one-byte `write_file`, so what this measures is waiting for a thread and the GIL."""
    found = []
    for call, result in itertools.pairwise(events):
        if call.kind == ev.TOOL_CALL and result.kind == ev.TOOL_RESULT and start <= call.ts < end:
            found.append((result.ts - call.ts) * 1000)
    return found


async def _loop_lag(samples: list[float], every_s: float = 0.01) -> None:
    """How late this event loop wakes a 10 ms sleeper (ms), until cancelled."""
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(every_s)
        samples.append((time.perf_counter() - t0 - every_s) * 1000)


async def in_process(args: argparse.Namespace, home: Path, peer: PeerProcess) -> dict[str, Any]:
    """The sessions run on a Dispatcher in this process; kills are handed over in memory."""
    from nexus.runtime.dispatch import Dispatcher

    rt = _runtime(home, peer.url, args.sessions + 50)
    lag: list[float] = []
    try:
        async with Dispatcher(rt) as dispatcher:
            ids = [rt.create_session(f"write files {i}", agent=AGENT) for i in range(args.sessions)]
            for sid in ids:
                await dispatcher.submit(sid)
            lagger = asyncio.create_task(_loop_lag(lag))
            try:
                result = await _run_and_kill(rt, ids, args, os.getpid(), peer.pid)
            finally:
                lagger.cancel()
                await asyncio.gather(lagger, return_exceptions=True)
    finally:
        await rt.aclose()
    result["loop_lag_ms"] = {
        "p50": round(percentile(lag, 0.5), 2),
        "p99": round(percentile(lag, 0.99), 2),
    }
    return result


class WorkerProcess:
    """`python -m nexus.cli worker` on a home, in a child process."""

    def __init__(self, home: Path, peer_url: str, concurrency: int) -> None:
        env = {
            **os.environ,
            "NEXUS_HOME": str(home),
            "NEXUS_PROVIDERS": providers_json(peer_url),
            "NEXUS_CONCURRENCY": str(concurrency),
        }
        cmd = [sys.executable, "-m", "nexus.cli", "worker"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)

    def wait_ready(self, timeout_s: float) -> None:
        """Until it prints `nexus worker ... ready`; `RuntimeError` if it does not."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline().strip() if ready else ""
        if "ready" not in line:
            self.close()
            raise RuntimeError(f"nexus worker did not start (printed {line!r})")

    def close(self) -> None:
        """SIGTERM (a graceful stop), then SIGKILL after 20 s."""
        terminate(self.proc, grace_s=20)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def cross_process(args: argparse.Namespace, home: Path, peer: PeerProcess) -> dict[str, Any]:
    """The sessions run in a `nexus worker` process; this one only creates and kills."""
    from nexus.runtime.dispatch import enqueue

    rt = _runtime(home, peer.url, args.sessions + 50)
    worker = WorkerProcess(home, peer.url, args.sessions + 50)
    try:
        worker.wait_ready(60)
        ids = [rt.create_session(f"write files {i}", agent=AGENT) for i in range(args.sessions)]
        gate = asyncio.Semaphore(8)

        async def queue(sid: str) -> None:
            async with gate:
                await enqueue(rt, sid)

        await asyncio.gather(*(queue(sid) for sid in ids))
        return await _run_and_kill(rt, ids, args, worker.proc.pid, peer.pid)
    finally:
        worker.close()
        await rt.aclose()


def poll_cost(home: Path, commands: int, repeat: int = 2000) -> dict[str, Any]:
    """µs per `commands_after` on a table of `commands` rows: up to date (the usual
    poll: nothing new) and with 10 new commands."""
    write_agent(home)
    rt = Runtime(load_settings(home=home))
    ids = [rt.create_session("poll", agent=AGENT) for _ in range(100)]
    store = rt.store
    for i in range(commands):
        store.post_command(ids[i % len(ids)], "pause", "bench", "poll cost", {})
    latest = store.latest_command_id()

    def per_call_us(after: int, expect: int) -> float:
        if len(store.commands_after(after)) != expect:
            raise RuntimeError(f"commands_after({after}) did not return {expect} rows")
        t0 = time.perf_counter()
        for _ in range(repeat):
            store.commands_after(after)
        return (time.perf_counter() - t0) * 1e6 / repeat

    idle = per_call_us(latest, 0)
    ten = per_call_us(latest - 10, 10)
    store.close()
    return {
        "commands": commands,
        "idle_us": round(idle, 1),
        "ten_new_us": round(ten, 1),
        "idle_core_share_at_50ms": round(idle / 50_000, 6),
    }


def print_report(cases: dict[str, dict[str, Any]], poll: dict[str, Any] | None) -> None:
    """The table on stdout (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=150)
    table = Table(title="kill latency, ms from the start of control.post (p50 / p99 / max)")
    for col in (
        "case",
        "(a) no further\nside effect",
        "(b) session.killed\njournaled",
        "post call",
        "cut short\n(llm/tool/between)",
        "files after (a)",
        "LLM calls/s\n(of ideal)",
        "CPU cores\nrunner/peer",
    ):
        table.add_column(col, justify="left" if col == "case" else "right")
    for name, c in cases.items():

        def trio(key: str, c: dict[str, Any] = c) -> str:
            s = c[key]
            return f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f} / {s['max_ms']:.1f}"

        cut = c["cut"]
        table.add_row(
            name,
            trio("a_no_further_effect"),
            trio("b_killed_journaled"),
            trio("post_call"),
            f"{cut.get('llm', 0)}/{cut.get('tool', 0)}/{cut.get('between steps', 0)}",
            f"{c['effects_after_stop']} of {c['effects']}",
            f"{c['llm_calls_per_s']} ({c['llm_calls_per_s'] / c['llm_calls_per_s_ideal']:.0%})",
            f"{c['runner_cores']:.2f} / {c['peer_cores']:.2f}",
        )
    console.print(table)
    for name, c in cases.items():
        tool = c["tool_step_ms"]
        console.print(
            f"{name}: a one-byte write_file step (tool.call to tool.result) took p50 "
            f"{tool['p50']} ms, p99 {tool['p99']} ms while the sessions settled"
        )
        if "loop_lag_ms" in c:
            lag = c["loop_lag_ms"]
            console.print(
                f"{name}: event-loop lag p50 {lag['p50']} ms, p99 {lag['p99']} ms "
                f"(a 10 ms sleeper, while the sessions ran and were killed)"
            )
    if poll is not None:
        console.print(
            f"poll query commands_after(last id) on {poll['commands']:,} commands: "
            f"{poll['idle_us']} µs up to date, {poll['ten_new_us']} µs with 10 new; "
            f"{poll['idle_core_share_at_50ms']:.4%} of a core at one poll per 50 ms"
        )
    for t in targets(cases):
        mark = {True: "[green]PASS[/]", False: "[red]MISS[/]"}[t["ok"]]
        console.print(f"{mark} {t['name']}: {t['detail']}")


def targets(cases: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """p99 of (a) <= 200 ms, per case; no file written after (a)."""
    found = []
    for name, c in cases.items():
        p99 = c["a_no_further_effect"]["p99_ms"]
        found.append(
            {
                "name": f"{name}: p99 of (a) <= {TARGET_A_P99_MS:.0f} ms",
                "ok": p99 <= TARGET_A_P99_MS,
                "detail": f"p99 {p99:.1f} ms over {c['sessions']} kills",
            }
        )
        found.append(
            {
                "name": f"{name}: no side effect after (a)",
                "ok": c["effects_after_stop"] == 0,
                "detail": f"{c['effects_after_stop']} of {c['effects']} files written after (a)",
            }
        )
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.kill", description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=200, help="live sessions per case")
    p.add_argument("--latency-ms", type=float, default=200, help="the peer's answer delay")
    p.add_argument("--spacing-ms", type=float, default=20, help="pause between two kills")
    p.add_argument(
        "--settle-s", type=float, default=2.0, help="run time once all run, before kills"
    )
    p.add_argument("--seed", type=int, default=7, help="of the random kill order")
    p.add_argument("--only", choices=("in-process", "cross-process"), default=None)
    p.add_argument("--poll-commands", type=int, default=POLL_COMMANDS)
    p.add_argument("--no-poll", action="store_true", help="skip the poll query's cost")
    p.add_argument("--case-timeout", type=float, default=90, help="seconds per wait of a case")
    args = p.parse_args(argv)
    if args.sessions < 1 or args.latency_ms <= 0 or args.settle_s <= 0:
        p.error("--sessions >= 1, --latency-ms > 0 and --settle-s > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run both cases, print the table, write bench/results/kill.json."""
    args = parse_args(argv)
    started = time.perf_counter()
    cases: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-kill-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["NEXUS_HOME"] = str(tmp / "default-home")  # no ~/.nexus/nexus.toml leaks in
        with PeerProcess(latency_ms=args.latency_ms) as peer:
            script_peer(peer.url)
            print(f"peer LLM at {peer.url} (pid {peer.pid}), {args.latency_ms:.0f} ms", flush=True)
            runs = {"in-process": in_process, "cross-process": cross_process}
            for name, run in runs.items():
                if args.only not in (None, name):
                    continue
                t0 = time.perf_counter()
                cases[name] = asyncio.run(run(args, tmp / name, peer))
                a = cases[name]["a_no_further_effect"]
                print(
                    f"{name:14} (a) p50 {a['p50_ms']:.1f} ms p99 {a['p99_ms']:.1f} ms "
                    f"({time.perf_counter() - t0:.1f} s)",
                    flush=True,
                )
        poll = None if args.no_poll else poll_cost(tmp / "poll", args.poll_commands)
    print()
    print_report(cases, poll)
    data = {
        "benchmark": "kill",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "source": source(),
        "options": vars(args),
        "cases": cases,
        "poll_query": poll,
        "targets": targets(cases),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    path = write_json("kill", data)
    print(
        f"\nwrote {path.relative_to(RESULTS.parent.parent)} in {data['elapsed_s']} s "
        f"(load average at the end {data['machine']['loadavg_1m']:.2f} on {os.cpu_count()} cpus)"
    )


if __name__ == "__main__":
    main()
