"""The API server under load: listing 10,000 sessions, and one busy session's live
events fanned out to 100 SSE clients.

The server (`bench._api_server`: `create_app` on uvicorn, workers on, auth on) runs
in its own process on a free loopback port; the clients run here. Every figure is
compared with a baseline measured in the same run:

* **sessions list** — `GET /api/v1/sessions?limit=50` at offsets 0, 5000 and 9950
  of 10,000 sessions, sequential from one keep-alive client, against `GET /healthz`
  (no auth, no database) and `GET /api/v1/version` (auth, no database). The
  endpoints take turns request by request, so noise lands on all of them alike.
  Target: p99 <= 50 ms for a page of 50.
* **SSE fan-out** — sessions replaying a recording of N `list_files` turns
  (3 journal events a turn) run one at a time (the server's concurrency is 1),
  each queued behind a short hold session, in rounds of four modes whose order
  rotates from round to round:

      none     nobody listens (the baseline)
      all      100 clients on /api/v1/events/stream, connected before the session starts
      session  100 clients on /api/v1/sessions/{id}/stream, connected while it is
               queued: they watch it from its first step to its `end`
      join     100 clients on /api/v1/sessions/{id}/stream, connecting once it runs:
               100 connections and catch-ups land inside its worker time (reported,
               not a target: it measures connection set-up more than fan-out)

  A session's worker time is from its `session.started` event to its
  `session.completed` (the server's own clock). Target: worker time with
  listeners <= 1.10 x without, for `all` and `session`. Each client must receive
  every event (count and last id == `last_seq`); resyncs are counted and resumed
  with `Last-Event-ID`, as a browser would.

Run from the repository root:

    .venv/bin/python -m bench.api                # default run, ~2 minutes on 2 cores
    .venv/bin/python -m bench.api --quick        # smoke run, ~15 s
    .venv/bin/python -m bench.api --profile on   # py-spy the server in extra rounds

A target missed triggers the py-spy profile (`--profile auto`, if py-spy is installed:
`.venv/bin/pip install py-spy`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import _api_profile
from bench._api_fanout import MODES, FanoutBench, SessionRun, summarise_fanout
from bench._api_server import ServerProcess, wait_ready
from bench._common import RESULTS, ROOT, machine, percentile, source, write_json
from nexus.config import load_settings
from nexus.runtime.runtime import Runtime

LIST_P99_TARGET_MS = 50.0
FILTERED = {
    "list-cost@5000": "?limit=50&offset=5000&sort=-cost",
    "list-duration": "?limit=50&sort=duration",
    "list-q": "?limit=50&q=summarise+the+FILES",
    "list-q-rare": "?limit=50&q=session+999%3A",  # one match: the whole table scanned
    "list-label-time": "?limit=50&label=bench%3Dapi&created_after=0&sort=-tokens",
    "totals": "/totals?label=bench%3Dapi",
}
FANOUT_RATIO_TARGET = 1.10


# -- data -----------------------------------------------------------------------------------------


def populate(home: Path, count: int) -> dict[str, Any]:
    """`count` finished sessions (`session.created` + `session.completed`), written
    through `Runtime.create_session` and `Journal.append` as a real server would."""
    rt = Runtime(load_settings(home=home))
    try:
        t0 = time.perf_counter()
        for i in range(count):
            sid = rt.create_session(
                f"bench session {i}: summarise the files in the workspace",
                labels={"bench": "api", "batch": str(i // 1000)},
            )
            rt.journal.append(
                sid, "session.completed", {"answer": "ok", "steps": 0}, reason="completed"
            )
            rt.journal.forget(sid)
        elapsed = time.perf_counter() - t0
    finally:
        rt.store.close()
    return {
        "sessions": count,
        "appends": 2 * count,
        "seconds": round(elapsed, 3),
        "sessions_per_s": round(count / elapsed, 1),
        "us_per_append": round(elapsed / (2 * count) * 1e6, 1),
    }


def write_recording(path: Path, turns: int) -> int:
    """An exported session (`nexus.session/1`) of `turns` `list_files` calls and a
    final answer; returns the journal events a replay of it writes."""
    events: list[dict[str, Any]] = []
    for i in range(turns):
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "list_files", "arguments": "{}"},
        }
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        events.append(_recorded(i + 3, message, "tool_calls"))
    final = {"role": "assistant", "content": f"listed the workspace {turns} times"}
    events.append(_recorded(turns + 3, final, "stop"))
    data = {
        "format": "nexus.session/1",
        "session": {"id": "s_bench_api", "agent": "assistant", "goal": "list files"},
        "events": events,
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    # created, started, (llm.response, tool.call, tool.result) per turn, answer, completed
    return 3 * turns + 4


def _recorded(seq: int, message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "seq": seq,
        "kind": "llm.response",
        "payload": {"message": message, "model": "bench", "finish_reason": finish},
        "tokens_in": 12,
        "tokens_out": 4,
    }


# -- sessions list --------------------------------------------------------------------------------


def stats_ms(samples: list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of samples in ms."""
    return {
        "p50_ms": percentile(samples, 0.5),
        "p90_ms": percentile(samples, 0.9),
        "p99_ms": percentile(samples, 0.99),
        "max_ms": max(samples),
        "mean_ms": statistics.fmean(samples),
    }


async def bench_list(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    *,
    total: int,
    requests: int,
    warmup: int,
) -> dict[str, Any]:
    """Sequential GETs, one request at a time, the endpoints taking turns."""
    auth = {"Authorization": f"Bearer {token}"}
    deep = [o for o in (total // 2, total - 50) if o > 0]
    targets: list[tuple[str, str, dict[str, str]]] = [
        ("healthz", "/healthz", {}),
        ("version", "/api/v1/version", auth),
    ]
    for offset in (0, *deep):
        targets.append((f"list@{offset}", f"/api/v1/sessions?limit=50&offset={offset}", auth))
    # The dashboard's views (issue 8): each order off its index, a goal search (a scan
    # that stops at 50 matches), a label, a time range, and the totals strip's sums.
    for name, query in FILTERED.items():
        targets.append((name, f"/api/v1/sessions{query}", auth))

    # Check each answer once, outside the timed loop.
    for name, path, headers in targets:
        async with http.get(url + path, headers=headers) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{name}: HTTP {resp.status}: {body}")
        if name.startswith("list@"):
            offset = int(name[5:])
            expect = min(50, total - offset)
            if len(body["items"]) != expect:
                raise RuntimeError(f"{name}: {len(body['items'])} items, expected {expect}")
        elif name == "totals" and body["count"] != total:
            raise RuntimeError(f"totals: count {body['count']}, expected {total}")
        elif name == "list-q-rare" and len(body["items"]) != 1:
            raise RuntimeError(f"{name}: {len(body['items'])} items, expected 1")
        elif (
            name.startswith("list-")
            and name != "list-q-rare"
            and len(body["items"]) != min(50, total)
        ):
            raise RuntimeError(f"{name}: {len(body['items'])} items, expected {min(50, total)}")

    samples: dict[str, list[float]] = {name: [] for name, _, _ in targets}
    for r in range(warmup + requests):
        k = r % len(targets)
        for name, path, headers in targets[k:] + targets[:k]:
            t0 = time.perf_counter()
            async with http.get(url + path, headers=headers) as resp:
                await resp.read()
                status = resp.status
            elapsed = (time.perf_counter() - t0) * 1000
            if status != 200:
                raise RuntimeError(f"{name}: HTTP {status}")
            if r >= warmup:
                samples[name].append(elapsed)
    out: dict[str, Any] = {"requests_each": requests, "warmup_each": warmup, "endpoints": {}}
    base = statistics.median(samples["healthz"])
    for name, path, _ in targets:
        s = stats_ms(samples[name])
        s["p50_minus_healthz_ms"] = s["p50_ms"] - base
        out["endpoints"][name] = {"path": path, **s}
    return out


# -- report ---------------------------------------------------------------------------------------


def table(rows: list[list[str]], head: list[str]) -> str:
    """Plain aligned text columns; the first left-aligned, the rest right-aligned."""
    cols = [head, *rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(head))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)
        )

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def report(result: dict[str, Any]) -> str:
    """The human-readable summary."""
    lines = []
    pop = result["populate"]
    lines.append(
        f"populate: {pop['sessions']:,} finished sessions ({pop['appends']:,} journal appends) "
        f"in {pop['seconds']:.2f} s = {pop['sessions_per_s']:,.0f} sessions/s, "
        f"{pop['us_per_append']:.0f} us/append"
    )
    lst = result["list"]
    lines.append(
        f"\nsessions list: {lst['requests_each']} sequential requests per endpoint, "
        f"one keep-alive client, endpoints interleaved"
    )
    rows = []
    for name, e in lst["endpoints"].items():
        rows.append(
            [
                name,
                f"{e['p50_ms']:.2f}",
                f"{e['p90_ms']:.2f}",
                f"{e['p99_ms']:.2f}",
                f"{e['max_ms']:.2f}",
                f"{e['p50_minus_healthz_ms']:+.2f}",
            ]
        )
    lines.append(table(rows, ["endpoint", "p50 ms", "p90 ms", "p99 ms", "max ms", "p50-healthz"]))

    if "fanout" in result:
        fan = result["fanout"]
        p = result["params"]
        lines.append(
            f"\nSSE fan-out: replayed sessions of {p['turns']} list_files turns "
            f"({fan['none']['events_per_session']:.0f} events), {p['clients']} clients, "
            f"{p['rounds']} rounds x {p['sessions_per_round']} sessions per mode, modes rotating, "
            f"clients {'plain (identity)' if p.get('plain') else 'deflated (as browsers)'}"
        )
        rows = []
        for mode, e in fan.items():
            rows.append(
                [
                    mode,
                    str(e["sessions"]),
                    f"{e['worker_s_p50'] * 1000:.0f}",
                    f"{e['ratio_p50']:.3f}",
                    f"{e['ratio_mean']:.3f}",
                    f"{e['journal_events_per_s']:,.0f}",
                    f"{e['server_cpu_s_per_session'] * 1000:.0f}",
                    f"{e['server_cpu_us_per_delivered_event']:.1f}" if mode != "none" else "-",
                    f"{e.get('delivered_events_per_s', 0):,.0f}" if mode != "none" else "-",
                    f"{e['lag_ms_p50']:.0f}/{e['lag_ms_max']:.0f}" if "lag_ms_p50" in e else "-",
                    f"{e['complete_clients']}/{e['expected_clients']}" if mode != "none" else "-",
                    str(e.get("resyncs", "-")),
                ]
            )
        head = [
            "mode",
            "n",
            "worker p50 ms",
            "x none p50",
            "x none mean",
            "journal ev/s",
            "server cpu ms",
            "+cpu us/delivery",
            "delivered ev/s",
            "lag p50/max ms",
            "complete",
            "resyncs",
        ]
        lines.append(table(rows, head))
        errors = [f"{m}: {e}" for m, v in fan.items() for e in v["errors"]]
        if errors:
            lines.append("errors:\n  " + "\n  ".join(errors[:20]))

    lines.append("\ntargets:")
    for t in result["targets"]:
        lines.append(f"  {'PASS' if t['pass'] else 'MISS'}  {t['name']}: {t['detail']}")

    for mode, prof in (result.get("profile") or {}).items():
        lines.append("")
        lines += _api_profile.render(mode, prof, str(profile_path(mode).relative_to(ROOT)))
    return "\n".join(lines)


def profile_path(mode: str) -> Path:
    """Where py-spy's raw stacks of one mode go."""
    return RESULTS / f"api_profile_{mode}.txt"


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its numbers, PASS or MISS."""
    out = []
    for name, e in result["list"]["endpoints"].items():
        if name.startswith(("list", "totals")):
            out.append(
                {
                    "name": f"GET {e['path']} p99 <= {LIST_P99_TARGET_MS:g} ms",
                    "pass": e["p99_ms"] <= LIST_P99_TARGET_MS,
                    "detail": f"p99 {e['p99_ms']:.2f} ms (healthz p99 "
                    f"{result['list']['endpoints']['healthz']['p99_ms']:.2f} ms)",
                }
            )
    for mode, e in result.get("fanout", {}).items():
        if mode in ("none", "join"):  # join: connection set-up, reported on its own
            continue
        ok = (
            e["ratio_p50"] <= FANOUT_RATIO_TARGET
            and e["complete_clients"] == e["expected_clients"]
            and not e["errors"]
        )
        out.append(
            {
                "name": f"worker time with {e['clients']} SSE clients ({mode}) <= "
                f"{FANOUT_RATIO_TARGET:.2f} x none, every client gets every event",
                "pass": ok,
                "detail": f"x{e['ratio_p50']:.3f} (p50; mean x{e['ratio_mean']:.3f}), "
                f"{e['complete_clients']}/{e['expected_clients']} complete clients, "
                f"{e['resyncs']} resyncs",
            }
        )
    return out


# -- main -----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Populate, start the server, measure, stop."""
    home = tmp / "home"
    result: dict[str, Any] = {"params": vars(args).copy()}
    print(f"populating {args.sessions:,} sessions ...", flush=True)
    result["populate"] = populate(home, args.sessions)
    # /readyz wants a provider configured (sessions without a replay need one); the
    # bench's sessions all replay, so one on a closed loopback port is never called.
    (home / "nexus.toml").write_text(
        '[[providers]]\nname = "unused"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "none"\n',
        encoding="utf-8",
    )
    recording = tmp / "recording.json"
    expected = write_recording(recording, args.turns)
    hold = tmp / "hold.json"
    write_recording(hold, 0)  # one answer, paced: what a measured session queues behind

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    # One session at a time, so that a measured session queues behind a hold session
    # and listeners can connect before it starts.
    with ServerProcess(
        home, sse_buffer=args.sse_buffer, concurrency=1, module=args.server_module
    ) as server:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            token = await wait_ready(http, server.url, home, 60)
            print(f"server {server.url} (pid {server.pid}); sessions list ...", flush=True)
            result["list"] = await bench_list(
                http,
                server.url,
                token,
                total=args.sessions,
                requests=args.list_requests,
                warmup=args.list_warmup,
            )
            if args.list_only:
                result["targets"] = targets(result)
                result["server_stderr"] = server.stderr()
                return result
            bench = FanoutBench(
                http,
                server,
                token,
                recording=recording,
                hold=hold,
                hold_s=args.hold_s,
                expected_events=expected,
                clients=args.clients,
                poll_s=args.poll_s,
                timeout_s=args.timeout_s,
                accept_encoding="identity" if args.plain else "gzip, deflate",
            )
            print("SSE fan-out: warm-up ...", flush=True)
            for mode in MODES:
                await bench.run_round(mode, -1, 1)
            runs: list[SessionRun] = []
            for rnd in range(args.rounds):
                k = rnd % len(MODES)
                order = MODES[k:] + MODES[:k]
                for mode in order:
                    runs += await bench.run_round(mode, rnd, args.sessions_per_round)
                done = [r for r in runs if r.round == rnd]
                medians = {
                    m: statistics.median(r.worker_s for r in done if r.mode == m) for m in MODES
                }
                shown = ", ".join(f"{m} {v * 1000:.0f} ms" for m, v in medians.items())
                print(f"  round {rnd + 1}/{args.rounds}: worker p50 {shown}", flush=True)
            result["fanout"] = summarise_fanout(runs, args.clients)
            result["fanout_runs"] = [r.__dict__ for r in runs]
            result["targets"] = targets(result)
            missed = not all(t["pass"] for t in result["targets"])
            if args.profile == "on" or (args.profile == "auto" and missed):
                print("profiling the server with py-spy ...", flush=True)
                result["profile"] = {}
                for mode in MODES:
                    result["profile"][mode] = await _api_profile.record(
                        server.pid,
                        profile_path(mode),
                        functools.partial(bench.run_round, mode, -1, args.profile_sessions),
                    )
        result["server_stderr"] = server.stderr()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m bench.api",
        description="Sessions list latency and SSE fan-out of the NEXUS API server.",
    )
    p.add_argument("--sessions", type=int, default=10_000, help="sessions in the database")
    p.add_argument("--list-requests", type=int, default=500, help="timed GETs per endpoint")
    p.add_argument("--list-warmup", type=int, default=20, help="untimed GETs per endpoint")
    p.add_argument("--turns", type=int, default=200, help="list_files turns per replayed session")
    p.add_argument("--clients", type=int, default=100, help="SSE clients per session")
    p.add_argument("--rounds", type=int, default=4, help="rounds of the three modes")
    p.add_argument("--sessions-per-round", type=int, default=3)
    p.add_argument(
        "--hold-s",
        type=float,
        default=1.0,
        help="how long each measured session waits in the queue (listeners connect then)",
    )
    p.add_argument("--sse-buffer", type=int, default=1000, help="the server's per-client buffer")
    p.add_argument(
        "--plain",
        action="store_true",
        help="SSE clients ask for identity, not deflate (browsers ask for deflate)",
    )
    p.add_argument("--poll-s", type=float, default=0.02, help="session status poll interval")
    p.add_argument("--timeout-s", type=float, default=120.0, help="bound on any one wait")
    p.add_argument(
        "--profile",
        choices=("auto", "on", "off"),
        default="auto",
        help="py-spy the server in extra rounds: always, never, or when a target is missed",
    )
    p.add_argument("--profile-sessions", type=int, default=2, help="sessions per profiled mode")
    p.add_argument(
        "--server-module",
        default="bench._api_server",
        help="module to run as the server (to try a variant; it takes _api_server's options)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: small numbers of everything")
    p.add_argument("--list-only", action="store_true", help="only the sessions list part")
    args = p.parse_args(argv)
    if args.quick:
        args.sessions, args.list_requests, args.list_warmup = 1000, 50, 5
        args.turns, args.clients, args.rounds, args.sessions_per_round = 50, 20, 1, 2
        args.profile_sessions = 1
    return args


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.api`."""
    args = parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-api-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["machine"] = machine()
    result["source"] = source()
    print()
    print(report(result))
    path = write_json("api", result)
    print(f"\nwrote {path.relative_to(ROOT)} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
