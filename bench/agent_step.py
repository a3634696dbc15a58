"""What one agent step costs: NEXUS against a hand-written loop and against peer frameworks.

Every scenario does the same one-tool agent run against the OpenAI-compatible
peer (`tests/peers/openai_server.py`, in its own process, 0 ms latency by
default): goal → LLM call → one `lookup(key)` tool call → LLM call → final
answer. The scenarios:

    a        hand-written loop on one pooled aiohttp session, nothing persisted
    b        NEXUS durable: journal committed per step + one DBOS workflow per session
    b-inline NEXUS journal only: `Runtime.run` inline, no DBOS (splits b's cost)
    c        LangGraph `create_react_agent` + ChatOpenAI + AsyncSqliteSaver
    c-mem    the same without a checkpointer
    d        OpenAI Agents SDK + OpenAIChatCompletionsModel + SQLiteSession
    d-mem    the same without a session

Added ms are against (a), measured at the start and again at the end of the
same run (pooled), since the machine is shared and noisy. Then: journal appends
per second against raw sqlite3 INSERT+COMMIT, and `import nexus` / `nexus --help`
wall time against `python -c pass`.

Run from the repository root, in the benchmark venv that holds the peers:

    .venv-bench/bin/python -m bench.agent_step            # full run, a few minutes
    .venv-bench/bin/python -m bench.agent_step --quick    # smoke run
    .venv-bench/bin/python -m bench.agent_step --profile pyinstrument   # where b spends
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._agent_scenarios import DURABLE_PEERS, PEER_KEYS, SCENARIOS
from bench._common import (
    RESULTS,
    Measurement,
    PeerProcess,
    RunCounter,
    machine,
    measure,
    pooled,
    source,
    time_command,
    write_json,
)

JOURNAL_TARGET_PER_S = 20_000
IMPORT_TARGET_MS = 150
HELP_TARGET_MS = 300
FRAMEWORK_DISTS = (
    "nexus-runtime",
    "dbos",
    "aiohttp",
    "langgraph",
    "langgraph-checkpoint-sqlite",
    "langchain-openai",
    "langchain-core",
    "openai-agents",
    "openai",
)


# -- journal and startup ------------------------------------------------------------------------

_RAW_DDL = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
    kind TEXT NOT NULL, payload TEXT NOT NULL, tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL DEFAULT 0, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
    UNIQUE (session_id, seq))
"""


def journal_appends(n: int, tmp: Path, sessions: int = 4, rounds: int = 4) -> dict[str, Any]:
    """`Journal.append` per second on SQLite (durability normal) against raw sqlite3
    INSERT+COMMIT of a row of the same shape, in WAL/NORMAL on the same disk.

    The two alternate in `rounds` slices so that machine noise hits both alike.
    """
    from nexus.runtime.journal import Journal
    from nexus.storage.sqlite import SQLiteStore

    store = SQLiteStore(tmp / "journal.db", durability="normal")
    journal = Journal(store)
    ids = [f"s_bench{k}" for k in range(sessions)]
    created = {"goal": "g", "agent": "a", "priority": 0, "labels": {}}
    for sid in ids:
        journal.append(sid, "session.created", created)
    payload = {"step": 1, "call_id": "call_1_0", "name": "lookup", "result": "value-of-x"}

    raw = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    raw.execute(_RAW_DDL)
    raw_payload = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    digest = "0" * 64
    seqs = dict.fromkeys(ids, 0)

    per_round = max(1, n // rounds)
    nexus_s = raw_s = 0.0
    done = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(done, done + per_round):
            journal.append(ids[i % sessions], "tool.result", payload)
        nexus_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(done, done + per_round):
            sid = ids[i % sessions]
            seqs[sid] += 1
            raw.execute("BEGIN")
            raw.execute(
                "INSERT INTO events VALUES (NULL, ?, ?, ?, ?, ?, 0, 0, 0, 0, ?, ?)",
                (sid, seqs[sid], time.time(), "tool.result", raw_payload, digest, digest),
            )
            raw.execute("COMMIT")
        raw_s += time.perf_counter() - t0
        done += per_round
    store.close()
    raw.close()
    group_rate = asyncio.run(_group_appends(tmp / "group.db", n, payload))
    nexus_rate, raw_rate = done / nexus_s, done / raw_s
    return {
        "appends": done,
        "sessions": sessions,
        "nexus_group_per_s": round(group_rate),
        "group_sessions": GROUP_SESSIONS,
        "nexus_per_s": round(nexus_rate),
        "raw_sqlite_per_s": round(raw_rate),
        "nexus_us_per_append": round(1e6 / nexus_rate, 2),
        "raw_us_per_insert": round(1e6 / raw_rate, 2),
        "ratio_to_raw": round(nexus_rate / raw_rate, 3),
    }


GROUP_SESSIONS = 50


async def _group_appends(path: Path, n: int, payload: dict[str, Any]) -> float:
    """`Journal.append_async` per second with 50 sessions appending at once, as the
    agent loop does at 50 in flight: concurrent events share a transaction (group
    commit) and each writer waits for its own commit."""
    from nexus.runtime.journal import Journal
    from nexus.storage.sqlite import SQLiteStore

    store = SQLiteStore(path, durability="normal")
    journal = Journal(store)
    created = {"goal": "g", "agent": "a", "priority": 0, "labels": {}}
    ids = [f"s_group{k}" for k in range(GROUP_SESSIONS)]
    for sid in ids:
        journal.append(sid, "session.created", created)
    per_session = max(1, n // GROUP_SESSIONS)

    async def writer(sid: str) -> None:
        for _ in range(per_session):
            await journal.append_async(sid, "tool.result", payload)

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(sid) for sid in ids))
    elapsed = time.perf_counter() - t0
    if not journal.verify().ok:
        raise RuntimeError("group-commit journal does not verify")
    store.close()
    return per_session * GROUP_SESSIONS / elapsed


def startup(repeat: int, tmp: Path) -> dict[str, Any]:
    """Wall ms of fresh interpreters: `python -c pass`, imports, and `nexus --help`.

    The commands alternate, one run each per round, so that noise hits all alike.
    """
    py = sys.executable
    script = Path(py).parent / "nexus"
    help_cmd = (
        [str(script), "--help"]
        if script.exists()
        else [py, "-c", "from nexus.cli.app import main; main()", "--help"]
    )
    commands = {
        "python -c pass": [py, "-c", "pass"],
        "import nexus": [py, "-c", "import nexus"],
        "import nexus.runtime.runtime": [py, "-c", "import nexus.runtime.runtime"],
        "import nexus.runtime.dispatch": [py, "-c", "import nexus.runtime.dispatch"],
        "nexus --help": help_cmd,
    }
    env = {**os.environ, "NEXUS_HOME": str(tmp / "startup-home")}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for cmd in commands.values():
        time_command(cmd, env)  # untimed: warms the bytecode and file caches
    for _ in range(repeat):
        for name, cmd in commands.items():
            times[name].append(time_command(cmd, env))
    base = statistics.median(times["python -c pass"])
    return {
        name: {
            "best_ms": round(min(t), 2),
            "median_ms": round(statistics.median(t), 2),
            "net_median_ms": round(statistics.median(t) - base, 2),
            "runs": len(t),
        }
        for name, t in times.items()
    }


# -- report -------------------------------------------------------------------------------------


@dataclass
class Target:
    """One target of the issue, met or missed, with the numbers that decide it."""

    name: str
    ok: bool | None  # None: could not be evaluated
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """As plain data."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def evaluate(
    results: dict[str, Measurement], journal: dict[str, Any] | None, boot: dict[str, Any] | None
) -> list[Target]:
    """The issue's targets. Added ms use p50 (robust to this machine's noise spikes)."""
    targets: list[Target] = []
    base, nexus = results.get("a"), results.get("b")
    peers = {k: results[k] for k in DURABLE_PEERS if k in results}
    if base is not None and nexus is not None:
        added = nexus.p50_ms - base.p50_ms
        if peers:
            best_key = min(peers, key=lambda k: peers[k].p50_ms)
            best = peers[best_key].p50_ms - base.p50_ms
            targets.append(
                Target(
                    "NEXUS durable added ms <= 1/2 fastest durable peer's",
                    added <= best / 2,
                    f"NEXUS +{added:.2f} ms vs {best_key} +{best:.2f} ms "
                    f"(limit {best / 2:.2f} ms; ratio {added / best:.2f})",
                )
            )
        else:
            targets.append(
                Target("NEXUS durable added ms <= 1/2 fastest durable peer's", None, "no peer ran")
            )
        for key, peer in peers.items():
            targets.append(
                Target(
                    f"NEXUS runs/s @{nexus.inflight} >= 2x {key}",
                    nexus.runs_per_s >= 2 * peer.runs_per_s,
                    f"NEXUS {nexus.runs_per_s:.0f}/s vs {key} {peer.runs_per_s:.0f}/s "
                    f"(x{nexus.runs_per_s / peer.runs_per_s:.2f})",
                )
            )
    if journal is not None:
        rate = journal["nexus_group_per_s"]
        targets.append(
            Target(
                f"journal appends/s >= {JOURNAL_TARGET_PER_S:,} "
                f"({journal['group_sessions']} sessions, group commit)",
                rate >= JOURNAL_TARGET_PER_S,
                f"{rate:,}/s; one writer alone {journal['nexus_per_s']:,}/s "
                f"({journal['ratio_to_raw']:.2f}x raw sqlite {journal['raw_sqlite_per_s']:,}/s)",
            )
        )
    if boot is not None:
        for name, limit in (("import nexus", IMPORT_TARGET_MS), ("nexus --help", HELP_TARGET_MS)):
            row = boot[name]
            targets.append(
                Target(
                    f"{name} <= {limit} ms",
                    row["median_ms"] <= limit,
                    f"median {row['median_ms']:.0f} ms, best {row['best_ms']:.0f} ms "
                    f"(net of python startup {row['net_median_ms']:.0f} ms)",
                )
            )
    return targets


def print_report(
    results: dict[str, Measurement],
    skipped: dict[str, str],
    drift: float | None,
    journal: dict[str, Any] | None,
    boot: dict[str, Any] | None,
    targets: list[Target],
) -> None:
    """Tables on stdout (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=160)
    base = results.get("a")
    table = Table(title="agent step: goal → LLM → lookup tool → LLM → answer (per run)")
    for col in (
        "scenario",
        "mean ms",
        "p50 ms",
        "p90 ms",
        "added ms\n(mean)",
        "added ms\n(p50)",
        "CPU ms\n(client)",
        "peer CPU\nms",
        "runs/s\n@inflight",
        "x (a)\nruns/s",
        "p50 ms\n@inflight",
    ):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for key, scenario in SCENARIOS.items():
        if key in skipped:
            table.add_row(scenario.label, skipped[key], *[""] * 9)
            continue
        m = results.get(key)
        if m is None:
            continue
        added_mean = "-" if base is None or key == "a" else f"{m.mean_ms - base.mean_ms:+.2f}"
        added_p50 = "-" if base is None or key == "a" else f"{m.p50_ms - base.p50_ms:+.2f}"
        ratio = "-" if base is None else f"{m.runs_per_s / base.runs_per_s:.2f}"
        table.add_row(
            scenario.label,
            f"{m.mean_ms:.2f}",
            f"{m.p50_ms:.2f}",
            f"{m.p90_ms:.2f}",
            added_mean,
            added_p50,
            f"{m.cpu_ms:.2f}",
            f"{m.peer_cpu_ms:.2f}",
            f"{m.runs_per_s:.0f}",
            ratio,
            f"{m.loaded_p50_ms:.1f}",
        )
    console.print(table)
    if base is not None:
        note = (
            f"(a) measured first and last, pooled; drift of p50 {drift:+.1%}. "
            if drift is not None
            else ""
        )
        console.print(
            f"{note}{base.runs} sequential runs per scenario (after warm-up); "
            f"{base.concurrent_runs // (2 if drift is not None else 1)} runs at "
            f"{base.inflight} in flight. CPU = this process (incl. its threads); "
            "peer CPU = the LLM peer process."
        )
    if journal is not None:
        console.print(
            f"\njournal: {journal['nexus_group_per_s']:,} appends/s with "
            f"{journal['group_sessions']} sessions appending at once (group commit); "
            f"one writer alone {journal['nexus_per_s']:,} appends/s "
            f"({journal['nexus_us_per_append']} µs each) vs raw sqlite3 INSERT+COMMIT "
            f"{journal['raw_sqlite_per_s']:,}/s ({journal['raw_us_per_insert']} µs); "
            f"ratio {journal['ratio_to_raw']:.2f}; {journal['appends']:,} appends "
            f"over {journal['sessions']} sessions, WAL, synchronous=NORMAL"
        )
    if boot is not None:
        boot_table = Table(title="startup (fresh interpreter, wall ms)")
        for col in ("command", "best", "median", "median - python -c pass"):
            boot_table.add_column(col, justify="left" if col == "command" else "right")
        for name, row in boot.items():
            boot_table.add_row(
                name,
                f"{row['best_ms']:.1f}",
                f"{row['median_ms']:.1f}",
                f"{row['net_median_ms']:.1f}",
            )
        console.print(boot_table)
    target_table = Table(title="targets")
    for col in ("", "target", "numbers"):
        target_table.add_column(col)
    for t in targets:
        mark = {True: "[green]PASS[/]", False: "[red]MISS[/]", None: "[yellow]n/a[/]"}[t.ok]
        target_table.add_row(mark, t.name, t.detail)
    console.print(target_table)


# -- main ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What `run_scenarios` measured; `passes` keeps (a)'s two passes apart."""

    results: dict[str, Measurement]
    skipped: dict[str, str]
    drift: float | None
    passes: dict[str, list[Measurement]]


async def run_scenarios(args: argparse.Namespace, tmp: Path) -> Outcome:
    """Measure the chosen scenarios against one peer process; (a) first and last."""
    wanted = [k for k in SCENARIOS if k in args.only] if args.only else list(SCENARIOS)
    if args.skip_peers:
        wanted = [k for k in wanted if k not in PEER_KEYS]
    skipped: dict[str, str] = {}
    for key in list(wanted):
        missing = SCENARIOS[key].missing()
        if missing:
            skipped[key] = "not installed"
            wanted.remove(key)
            print(f"{SCENARIOS[key].label}: not installed ({', '.join(missing)})", flush=True)
    if args.skip_peers:
        skipped.update(dict.fromkeys(PEER_KEYS, "skipped"))
    order = wanted + (["a"] if "a" in wanted and len(wanted) > 1 else [])
    measured: dict[str, list[Measurement]] = {}
    counter = RunCounter()
    with PeerProcess(latency_ms=args.latency_ms) as peer:
        print(f"peer LLM at {peer.url} (pid {peer.pid})", flush=True)
        for key in order:
            scenario = SCENARIOS[key]
            t0 = time.perf_counter()
            try:
                async with (
                    asyncio.timeout(args.scenario_timeout),
                    scenario.build(peer.url, tmp, args.inflight) as run_one,
                ):
                    m = await measure(
                        run_one,
                        warmup=args.warmup,
                        runs=args.runs,
                        inflight=args.inflight,
                        concurrent_runs=args.concurrent_runs,
                        peer=peer,
                        counter=counter,
                    )
            except ImportError as exc:
                skipped[key] = "not installed"
                print(f"{scenario.label}: not installed ({exc})", flush=True)
                continue
            except Exception:  # one broken scenario must not hide the others' numbers
                skipped[key] = "FAILED"
                print(f"{scenario.label}: FAILED", flush=True)
                traceback.print_exc()
                continue
            measured.setdefault(key, []).append(m)
            print(
                f"{scenario.label:34} p50 {m.p50_ms:7.2f} ms  mean {m.mean_ms:7.2f} ms  "
                f"{m.runs_per_s:7.0f} runs/s @{m.inflight}  ({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
    results = {k: (pooled(*ms) if len(ms) == 2 else ms[0]) for k, ms in measured.items()}
    drift = None
    if len(measured.get("a", [])) == 2:
        first, last = measured["a"]
        drift = last.p50_ms / first.p50_ms - 1
    return Outcome(results, skipped, drift, measured)


def versions() -> dict[str, str]:
    """Installed versions of NEXUS and the peer frameworks."""
    found: dict[str, str] = {}
    for dist in FRAMEWORK_DISTS:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench.agent_step", description=__doc__.split("\n")[0]
    )
    p.add_argument("--runs", type=int, default=200, help="sequential runs per scenario")
    p.add_argument("--warmup", type=int, default=20, help="untimed runs per scenario first")
    p.add_argument("--inflight", type=int, default=50, help="runs in flight in the load phase")
    p.add_argument("--concurrent-runs", type=int, default=500, help="runs in the load phase")
    p.add_argument("--journal-appends", type=int, default=20_000)
    p.add_argument("--startup-repeat", type=int, default=7)
    p.add_argument("--latency-ms", type=float, default=0, help="the peer's answer delay")
    p.add_argument(
        "--durability",
        choices=("normal", "full"),
        default="normal",
        help="NEXUS journal and DBOS synchronous mode for (b); the peers' SQLite files "
        "keep SQLite's default, synchronous=FULL",
    )
    p.add_argument("--skip-peers", action="store_true", help="only (a) and NEXUS")
    p.add_argument("--quick", action="store_true", help="smoke run: few runs of everything")
    p.add_argument(
        "--only", type=lambda s: s.split(","), default=None, help=f"of {','.join(SCENARIOS)}"
    )
    p.add_argument("--no-journal", action="store_true", help="skip the journal benchmark")
    p.add_argument("--no-startup", action="store_true", help="skip the startup benchmark")
    p.add_argument("--scenario-timeout", type=float, default=300, help="seconds per scenario")
    p.add_argument(
        "--profile",
        choices=("pyinstrument", "cprofile"),
        help="only profile (b) NEXUS durable over --runs sequential runs",
    )
    p.add_argument("--profile-top", type=int, default=30)
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.warmup, args.concurrent_runs = 20, 5, 100
        args.journal_appends, args.startup_repeat = 2_000, 3
    for name in ("runs", "inflight", "concurrent_runs", "journal_appends", "startup_repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.only:
        unknown = set(args.only) - set(SCENARIOS)
        if unknown:
            p.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the tables, write bench/results/agent_step.json."""
    args = parse_args(argv)
    # Nothing here may reach the internet: no LangSmith, no OpenAI trace export.
    os.environ["LANGSMITH_TRACING"] = os.environ["LANGCHAIN_TRACING_V2"] = "false"
    os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["NEXUS_HOME"] = str(tmp / "home")  # no ~/.nexus/nexus.toml leaks in
        os.environ["NEXUS_DURABILITY"] = args.durability  # read by load_settings in (b)
        if args.profile:
            from bench._profile import profile

            asyncio.run(profile(args, tmp))
            return
        started = time.perf_counter()
        outcome = asyncio.run(run_scenarios(args, tmp))
        journal = None if args.no_journal else journal_appends(args.journal_appends, tmp)
        boot = None if args.no_startup else startup(args.startup_repeat, tmp)
    results, measured = outcome.results, outcome.passes
    targets = evaluate(results, journal, boot)
    print()
    print_report(results, outcome.skipped, outcome.drift, journal, boot, targets)
    base = results.get("a")
    data = {
        "benchmark": "agent_step",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "source": source(),
        "versions": versions(),
        "options": {k: v for k, v in vars(args).items() if k != "profile"},
        "baseline_p50_drift": outcome.drift,
        "scenarios": {
            key: {
                "label": SCENARIOS[key].label,
                "durable": SCENARIOS[key].durable,
                **m.to_dict(),
                "added_ms_mean": None if base is None else round(m.mean_ms - base.mean_ms, 4),
                "added_ms_p50": None if base is None else round(m.p50_ms - base.p50_ms, 4),
                "runs_per_s_ratio_to_a": None
                if base is None
                else round(m.runs_per_s / base.runs_per_s, 4),
                "passes": [x.to_dict() for x in measured[key]] if len(measured[key]) > 1 else None,
            }
            for key, m in results.items()
        },
        "skipped": outcome.skipped,
        "journal": journal,
        "startup": boot,
        "targets": [t.to_dict() for t in targets],
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    path = write_json("agent_step", data)
    print(f"\nwrote {path.relative_to(RESULTS.parent.parent)} in {data['elapsed_s']} s")
    if "FAILED" in outcome.skipped.values():
        sys.exit(1)


if __name__ == "__main__":
    main()
