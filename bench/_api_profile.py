"""Where the API server's time goes: py-spy samples of the server process, summarised.

py-spy samples from outside the process (nothing in the server changes), with
`--threads` so that the event loop's thread, which runs the session workers, the
broadcaster and every SSE stream, is told apart from DBOS's and the thread pool's.
Each event-loop sample is put in one bucket by the first marker its stack holds.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

RATE_HZ = 200

# First match wins: (bucket, the start of one frame of the stack). Frames read
# "function (path:line)", where py-spy shortens some paths to the file name alone.
# Coroutine stacks are often cut short in samples, hence the several markers a bucket.
_SEND = "HTTP send path, mostly SSE chunks (starlette > uvicorn > h11 > socket)"
_WAIT = "SSE: stream generator, wait_for per wake (a task and a timer each)"
_SUBSCRIBE = "SSE: subscribe + backlog (stream handlers)"
_WORKER = "session worker: agent loop + journal"
BUCKETS = (
    ("SSE: session-finished check per wake", "session_stream.<locals>.final_frames ("),
    (_SEND, "StreamingResponse.stream_response ("),
    (_SEND, "RequestResponseCycle.send ("),
    (_SEND, "wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender ("),
    (_SEND, "ServerErrorMiddleware.__call__.<locals>._send ("),
    (_SEND, "BodyLimit.__call__.<locals>.guarded_send ("),
    (_SEND, "_SelectorSocketTransport.write ("),
    (_SEND, "Connection.send_with_data_passthrough ("),
    (_SEND, "BodyWriter.__call__ ("),
    (_SUBSCRIBE, "session_stream ("),
    (_SUBSCRIBE, "all_events_stream ("),
    ("broadcaster: read journal + fan out", "Broadcaster._run ("),
    (_WORKER, "run_session ("),
    (_WORKER, "session_workflow ("),
    (_WORKER, "JournalRecorder.handle ("),
    (_WORKER, "Journal.append"),
    (_WAIT, "_stream ("),
    (_WAIT, "wait_for ("),
    (_WAIT, "Event.wait ("),
    (_WAIT, "_release_waiter ("),
    ("other requests (POST, status polls)", "RequestResponseCycle.run_asgi ("),
)
OTHER = "event loop: scheduling, selector, other"
# Frames under every event-loop sample; left out of the cumulative list.
_SCAFFOLDING = (
    "<module> (",
    "_run_module_as_main (",
    "_run_code (",
    "main (bench/",
    "Server.run (",
    "asyncio_run (",
    "Runner.run (",
    "BaseEventLoop.run_",
    "BaseEventLoop._run_once (",
    "Handle._run (",
)


def py_spy() -> str | None:
    """The py-spy executable, if installed (`.venv/bin/pip install py-spy`)."""
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


async def record(pid: int, raw: Path, work: Callable[[], Awaitable[object]]) -> dict[str, Any]:
    """Sample `pid` while `work()` runs; returns the summary (or an error)."""
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.unlink(missing_ok=True)
    cmd = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", str(RATE_HZ)]
    cmd += ["--threads", "--nonblocking", "--output", str(raw)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        await asyncio.sleep(1.0)  # py-spy attaches
        t0 = time.perf_counter()
        await work()
        seconds = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    if not raw.exists():
        return {"error": f"py-spy wrote nothing: {err[-500:]}"}
    try:
        return summarise(raw, seconds)
    except (OSError, ValueError) as exc:  # a profile is a diagnosis: never lose the run to it
        return {"error": f"cannot read {raw}: {type(exc).__name__}: {exc}"}


def summarise(raw: Path, seconds: float, top: int = 15) -> dict[str, Any]:
    """Samples by thread; event-loop samples by bucket, own and cumulative function."""
    threads: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    cum: collections.Counter[str] = collections.Counter()
    loop_samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames.pop(0).split(": ", 1)[-1] if frames[0].startswith("thread (") else "?"
        if not frames:
            continue
        if frames and frames[-1].startswith(("EpollSelector.select (", "select (")):
            continue  # waiting for I/O: py-spy's --nonblocking mode may not call it idle
        is_loop = thread == "MainThread"  # uvicorn runs the event loop on the main thread
        threads["event loop" if is_loop else _thread_kind(thread, frames)] += n
        if not is_loop:
            continue
        loop_samples += n
        buckets[
            next((b for b, marker in BUCKETS if any(f.startswith(marker) for f in frames)), OTHER)
        ] += n
        names = [_frame_name(f) for f in frames]
        own[names[-1]] += n
        for name in set(names):
            cum[name] += n
    if not loop_samples:
        return {"error": "no samples of the event loop", "threads": dict(threads)}

    def share(c: collections.Counter[str], of: float, k: int = top) -> list[tuple[str, float]]:
        return [(key, round(100 * v / of, 1)) for key, v in c.most_common(k)]

    cum_useful = collections.Counter(
        {k: v for k, v in cum.items() if not k.startswith(_SCAFFOLDING)}
    )
    return {
        "seconds": round(seconds, 2),
        "rate_hz": RATE_HZ,
        "threads_pct_of_samples": share(threads, sum(threads.values())),
        "loop_buckets_pct": share(buckets, loop_samples),
        "loop_own_pct": share(own, loop_samples),
        "loop_cumulative_pct": share(cum_useful, loop_samples),
    }


def _thread_kind(name: str, frames: list[str]) -> str:
    text = ";".join(frames)
    if "dbos/" in text:
        return "DBOS threads"
    if "concurrent/futures/thread.py" in text:
        return f"thread pool ({'tools' if 'nexus/runtime' in text else 'other'})"
    return name


def _frame_name(frame: str) -> str:
    # py-spy frames read "function (path/to/file.py:LINE)"; drop the line, shorten the path.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "/lib/python3.11/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def render(mode: str, prof: dict[str, Any], raw: str) -> list[str]:
    """Report lines for one profiled mode."""
    if "loop_buckets_pct" not in prof:
        return [f"profile ({mode}): {prof.get('error', 'no samples')}"]
    lines = [
        f"server profile, mode {mode!r} (py-spy {prof['rate_hz']} Hz over {prof['seconds']} s; "
        f"raw stacks: {raw})",
        "  samples by thread: "
        + ", ".join(f"{k} {v}%" for k, v in prof["threads_pct_of_samples"][:6]),
        "  event loop time by bucket:",
    ]
    lines += [f"    {v:5.1f}%  {k}" for k, v in prof["loop_buckets_pct"]]
    lines.append("  event loop, own time:")
    lines += [f"    {v:5.1f}%  {k}" for k, v in prof["loop_own_pct"][:12]]
    lines.append("  event loop, cumulative:")
    lines += [f"    {v:5.1f}%  {k}" for k, v in prof["loop_cumulative_pct"][:15]]
    return lines
