"""What observability costs: tracing, cost accounting, loop detection and budgets on
against off per agent run, and `/metrics` and `costs --by day` on a journal of a
million events.

Two parts, each against a baseline measured in the same run:

    overhead  the durable agent run of bench.agent_step (scenario b: journal per step,
              one DBOS workflow per session) with everything off, then with OTLP
              export to a local receiver, priced calls, the loop guard and a global
              budget on; off / on / off / on, pooled. Target: on costs at most 5%
              more time per run.
    big       a journal of N events (default 1,000,000) filled through the store's
              group commit; the rollup folds it once (events/s); then p50/p99 of
              GET /metrics and GET /api/v1/costs?by=day through the ASGI app, and of
              the rollup call behind the CLI's `nexus costs --by day`, against the
              same day totals computed by scanning the journal (the baseline: what
              a per-request aggregate would cost). Target: p99 under 100 ms each.

    python -m bench.tracing                        # both parts, SQLite
    python -m bench.tracing --only big --events 200000
    python -m bench.tracing --store postgres       # a throwaway PostgreSQL cluster
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench._common import machine, percentile, source, write_json

SCRAPE_TARGET_MS = 100.0
OVERHEAD_TARGET = 1.05


def _timed(fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _timed_async(fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _stats(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "mean_ms": round(statistics.fmean(samples), 3),
        "p50_ms": round(percentile(samples, 0.5), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
    }


def _scan_by_day(store: Any) -> list[tuple[Any, ...]]:
    """The baseline: the day totals by scanning every LLM event of the journal."""
    sql = (
        "SELECT CAST(ts / 86400 AS BIGINT) * 86400, SUM(cost_usd), COUNT(*) FROM events "
        "WHERE kind IN ('llm.response', 'llm.failed', 'llm.lost') GROUP BY 1 ORDER BY 1"
    )
    conn = store.connect()
    try:
        return list(conn.execute(sql).fetchall())
    finally:
        conn.close()


async def big(events: int, repeat: int) -> dict[str, Any]:
    """The `big` part (see the module docstring)."""
    import httpx

    from bench._journal_fill import fill
    from nexus.config import load_settings
    from nexus.observe.metrics import exposition, registry
    from nexus.observe.rollup import Rollup
    from nexus.runtime.runtime import Runtime
    from nexus.server.app import create_app

    rt = Runtime(load_settings())
    print(f"filling the journal with {events:,} events …", flush=True)
    filled = fill(rt.store, events)
    print(f"  {filled['events']:,} events in {filled['seconds']:.1f} s", flush=True)
    rollup = Rollup(rt.store)
    t0 = time.perf_counter()
    folded = rollup.catch_up()
    fold_s = time.perf_counter() - t0
    print(f"  the rollup folded {folded:,} events in {fold_s:.1f} s", flush=True)
    reg = registry(rt.store, rollup)
    direct_scrape = _timed(lambda: exposition(reg), repeat)
    direct_costs = _timed(lambda: rollup.costs("day"), repeat)
    scan = _timed(lambda: _scan_by_day(rt.store), max(3, repeat // 20))
    day_totals = {int(k): round(float(v), 9) for k, v, _ in _scan_by_day(rt.store)}
    rolled = {i["key"]: round(i["cost_usd"], 9) for i in rollup.costs("day").items}
    if day_totals != rolled:
        raise SystemExit(
            f"the rollup's day totals differ from the journal's: {rolled} {day_totals}"
        )
    # A few hundred new events after the fold, as a live system has between two scrapes.
    fill_more = fill(rt.store, 900, seed=11, first=int(filled["sessions"]))
    t1 = time.perf_counter()
    caught = rollup.catch_up()
    catch_ms = (time.perf_counter() - t1) * 1000
    rollup.close()

    app = create_app(rt, workers=False)
    async with app.router.lifespan_context(app):
        token = app.state.nexus.auth.tokens.read()
        headers = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:

            async def scrape() -> None:
                resp = await client.get("/metrics", headers=headers)
                resp.raise_for_status()

            async def costs() -> None:
                resp = await client.get("/api/v1/costs", params={"by": "day"}, headers=headers)
                resp.raise_for_status()

            await scrape()
            await costs()
            http_scrape = await _timed_async(scrape, repeat)
            http_costs = await _timed_async(costs, repeat)
    await rt.aclose()
    results = {
        "events": filled["events"] + fill_more["events"],
        "fill_per_s": round(filled["per_s"]),
        "fold_per_s": round(folded / fold_s),
        "catch_up_900_events_ms": round(catch_ms, 2),
        "caught_up": caught,
        "metrics_http": _stats(http_scrape),
        "costs_by_day_http": _stats(http_costs),
        "metrics_direct": _stats(direct_scrape),
        "costs_by_day_direct": _stats(direct_costs),
        "baseline_scan_by_day": _stats(scan),
    }
    base = results["baseline_scan_by_day"]["p50_ms"]
    results["scan_over_rollup_p50"] = round(base / results["costs_by_day_direct"]["p50_ms"], 1)
    results["met"] = {
        "metrics_p99_under_100ms": results["metrics_http"]["p99_ms"] < SCRAPE_TARGET_MS,
        "costs_p99_under_100ms": results["costs_by_day_http"]["p99_ms"] < SCRAPE_TARGET_MS,
    }
    return results


def print_big(r: dict[str, Any]) -> None:
    print(f"\njournal: {r['events']:,} events (filled at {r['fill_per_s']:,}/s); "
          f"the rollup folds {r['fold_per_s']:,} events/s; 900 new events caught up in "
          f"{r['catch_up_900_events_ms']} ms")  # fmt: skip
    print(f"{'':28}{'p50 ms':>10}{'p99 ms':>10}")
    for key in ("metrics_http", "costs_by_day_http", "metrics_direct", "costs_by_day_direct",
                "baseline_scan_by_day"):  # fmt: skip
        s = r[key]
        print(f"{key:28}{s['p50_ms']:>10.2f}{s['p99_ms']:>10.2f}")
    print(f"scanning the journal for the day totals takes {r['scan_over_rollup_p50']}x the "
          f"rollup's p50")  # fmt: skip
    for name, ok in r["met"].items():
        print(f"  {name}: {'met' if ok else 'NOT met'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=("overhead", "big"), default=None)
    p.add_argument(
        "--parts", action="store_true",
        help="overhead part: also measure each feature alone against off",
    )  # fmt: skip
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=200, help="timed requests per figure")
    p.add_argument("--runs", type=int, default=300, help="agent runs per half, overhead part")
    p.add_argument(
        "--peer-latency-ms", type=float, default=0.0,
        help="overhead part: the model peer's latency per call (the target is set at 0)",
    )  # fmt: skip
    p.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out: dict[str, Any] = {"machine": machine(), "source": source(), "store": args.store}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexus-bench-")))
        os.chmod(tmp, 0o755)  # PostgreSQL's own user reads its cluster folder
        os.environ["NEXUS_HOME"] = str(tmp / "home")
        os.environ.pop("NEXUS_DATABASE_URL", None)
        if args.store == "postgres":
            from bench.scale import Postgres

            pg = Postgres(tmp / "pg")
            pg.start()
            stack.callback(pg.stop)
            os.environ["NEXUS_DATABASE_URL"] = pg.new_database()
        if args.only in (None, "overhead"):
            from bench._tracing_overhead import overhead, print_overhead

            out["overhead"] = asyncio.run(overhead(args.runs, tmp, latency_ms=args.peer_latency_ms))
            print_overhead(out["overhead"])
            if args.parts:
                from bench._tracing_overhead import parts, print_parts

                out["overhead_parts"] = asyncio.run(parts(args.runs, tmp))
                print_parts(out["overhead_parts"])
        if args.only in (None, "big"):
            out["big"] = asyncio.run(big(args.events, args.repeat))
            print_big(out["big"])
    path = write_json("tracing", out)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    sys.exit(main())
