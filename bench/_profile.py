"""`python -m bench.agent_step --profile ...`: where NEXUS durable (scenario b) spends a run.

`cprofile` profiles every thread, not only the event loop's: DBOS does its
database work in a thread pool, which a main-thread profiler shows only as time
waiting in `epoll`. Numbers are per run, so they read directly against the
benchmark's "added ms". `pyinstrument` gives the event loop's call tree.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import pstats
import threading
import time
from pathlib import Path
from typing import Any

from bench._agent_scenarios import nexus_durable
from bench._common import RESULTS, PeerProcess, RunCounter

# Time a thread spends blocked rather than working; listed apart from the hot spots.
_WAITS = (
    "poll' of 'select.epoll",
    "acquire' of '_thread.lock",
    "method 'get' of '_queue",
    "method time.sleep",
)
# Frames that only wrap a thread's idle loop (their cumulative time is mostly waiting).
_IDLE = ("threading.py", "queue_worker_thread", "futures/thread.py:69(", "selectors.py")


class _AllThreads:
    """cProfile in the calling thread and in each thread that runs code while active."""

    def __init__(self) -> None:
        self.active = False
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def install(self) -> None:
        """Hook threads started from now on (call before DBOS creates its pool)."""
        threading.setprofile(self._hook)

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        if not self.active:
            return
        profile = cProfile.Profile()
        with self._lock:
            self.profiles.append(profile)
        profile.enable()  # replaces this hook for the rest of the thread's life

    def start(self) -> None:
        """Profile the calling thread now, and worker threads from their next call."""
        main = cProfile.Profile()
        self.profiles.append(main)
        self.active = True
        main.enable()

    def stop(self) -> pstats.Stats:
        """All threads' statistics, merged."""
        self.profiles[0].disable()
        self.active = False
        threading.setprofile(None)  # type: ignore[arg-type]
        with self._lock:
            stats = pstats.Stats(self.profiles[0], stream=io.StringIO())
            for profile in self.profiles[1:]:
                stats.add(profile)
        return stats


def _short(path: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _package(file: str, fn: str) -> str:
    if file == "~":  # C functions: name the object they belong to
        return "C: " + (
            fn.split("'")[3] if fn.count("'") >= 4 else fn.rsplit(" ", maxsplit=1)[-1].rstrip(">")
        )
    for marker in ("site-packages/", "/src/"):
        if marker in file:
            return file.split(marker, 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/lib/python3" in file:
        return "stdlib " + file.split("/lib/python3", 1)[1].split("/")[1].removesuffix(".py")
    return Path(file).parent.name or file


def _by_package(stats: pstats.Stats, runs: int, top: int) -> list[str]:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    totals: dict[str, float] = {}
    for (file, _line, fn), (_cc, _nc, tt, _ct, _callers) in raw.items():
        if not any(w in fn for w in _WAITS):
            key = _package(file, fn)
            totals[key] = totals.get(key, 0.0) + tt
    ranked = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return [f"  {tt * 1000 / runs:8.3f}  {name}" for name, tt in ranked]


def _table(stats: pstats.Stats, runs: int, order: str, top: int, waits: bool) -> list[str]:
    index = 2 if order == "tottime" else 3
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows = [
        (key, value)
        for key, value in raw.items()
        if any(w in key[2] for w in _WAITS) == waits
        and not any(idle in f"{key[0]}:{key[1]}({key[2]}" for idle in _IDLE)
    ]
    rows.sort(key=lambda kv: kv[1][index], reverse=True)
    lines = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in rows[:top]:
        where = f"{_short(file)}:{line}({fn})" if line else fn
        lines.append(f"  {tt * 1000 / runs:8.3f} {ct * 1000 / runs:8.3f} {nc / runs:8.1f}  {where}")
    return lines


async def profile(args: argparse.Namespace, tmp: Path) -> None:
    """Profile `args.runs` sequential runs of (b) after `args.warmup` untimed ones."""
    counter = RunCounter()
    runs = args.runs
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"agent_step_profile_{args.profile}.txt"
    if args.profile == "pyinstrument" and importlib.util.find_spec("pyinstrument") is None:
        raise SystemExit(
            "pyinstrument is not installed: pip install pyinstrument, or --profile cprofile"
        )
    threads = _AllThreads()
    if args.profile == "cprofile":
        threads.install()
    with PeerProcess(latency_ms=args.latency_ms) as peer:
        async with nexus_durable(peer.url, tmp, args.inflight) as run_one:
            for i in counter.take(args.warmup):
                await run_one(i)
            if args.profile == "pyinstrument":
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0002, async_mode="enabled")
                profiler.start()
                for i in counter.take(runs):
                    await run_one(i)
                profiler.stop()
                text = profiler.output_text(unicode=True, color=False, show_all=False)
                report = f"pyinstrument, {runs} runs of (b); divide by {runs} for per run\n{text}"
            else:
                t0 = time.perf_counter()
                threads.start()
                for i in counter.take(runs):
                    await run_one(i)
                stats = threads.stop()
                wall = (time.perf_counter() - t0) * 1000 / runs
                head = "tottime  cumtime  calls  (ms and calls per run)"
                lines = [
                    f"cProfile over {len(threads.profiles)} threads, {runs} runs of (b): "
                    f"{wall:.2f} ms wall per run (profiled, so slower than measured)",
                    "\nown time by package, ms per run (all threads, waits excluded):",
                    *_by_package(stats, runs, 15),
                    f"\nhot spots by own time: {head}",
                    *_table(stats, runs, "tottime", args.profile_top, waits=False),
                    f"\nby cumulative time: {head}",
                    *_table(stats, runs, "cumulative", args.profile_top, waits=False),
                    f"\nblocked (all threads): {head}",
                    *_table(stats, runs, "tottime", 5, waits=True),
                ]
                report = "\n".join(lines)
    out.write_text(report + "\n", encoding="utf-8")
    print(report)
    print(f"\nfull profile: {out.relative_to(RESULTS.parent.parent)}")
