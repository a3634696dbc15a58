"""`bench.scale`'s agent-step part: bench.agent_step's NEXUS durable case on each store.

The same run as `bench.agent_step` (b): `Dispatcher.submit` + `wait` in this
process, one DBOS workflow per session, the journal committed per step; once on
SQLite in its home and once with `NEXUS_DATABASE_URL` set (the journal, the index
and DBOS's queue in PostgreSQL). The time each adds over the hand-written loop
(a) is compared. The order (a), SQLite, PostgreSQL, PostgreSQL, SQLite, (a) puts
the machine's drift on both stores alike; each pair is pooled.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench._agent_scenarios import baseline, nexus_durable
from bench._common import Measurement, PeerProcess, RunCounter, measure, pooled

INFLIGHT = 50


@contextmanager
def _database(url: str | None) -> Iterator[None]:
    """`NEXUS_DATABASE_URL` set to `url` (unset for None) while inside."""
    before = os.environ.pop("NEXUS_DATABASE_URL", None)
    if url is not None:
        os.environ["NEXUS_DATABASE_URL"] = url
    try:
        yield
    finally:
        os.environ.pop("NEXUS_DATABASE_URL", None)
        if before is not None:
            os.environ["NEXUS_DATABASE_URL"] = before


async def _measure_all(runs: int, tmp: Path, pg_url: str) -> dict[str, list[Measurement]]:
    order = [("a", None), ("sqlite", None), ("postgres", pg_url)]
    order += [order[2], order[1], order[0]]
    counter = RunCounter()
    found: dict[str, list[Measurement]] = {}
    with PeerProcess(latency_ms=0) as peer:
        for turn, (key, url) in enumerate(order):
            build = baseline if key == "a" else nexus_durable
            with _database(url):
                async with build(peer.url, tmp / f"step-{key}-{turn}", INFLIGHT) as run_one:
                    m = await measure(
                        run_one,
                        warmup=max(5, runs // 10),
                        runs=runs,
                        inflight=INFLIGHT,
                        concurrent_runs=2 * INFLIGHT,
                        peer=peer,
                        counter=counter,
                    )
            found.setdefault(key, []).append(m)
            print(f"agent-step {key:9} p50 {m.p50_ms:7.2f} ms", flush=True)
    return found


def agent_step_on_both(runs: int, tmp: Path, pg_url: str) -> dict[str, Any]:
    """p50 ms of (a), and what (b) adds to it on SQLite and on PostgreSQL."""
    passes = asyncio.run(_measure_all(runs, tmp, pg_url))
    a, sqlite, postgres = (pooled(*passes[k]) for k in ("a", "sqlite", "postgres"))
    added_sqlite = sqlite.p50_ms - a.p50_ms
    added_pg = postgres.p50_ms - a.p50_ms
    return {
        "runs": runs * 2,
        "baseline_p50_ms": round(a.p50_ms, 2),
        "sqlite_p50_ms": round(sqlite.p50_ms, 2),
        "postgres_p50_ms": round(postgres.p50_ms, 2),
        "added_ms_sqlite": round(added_sqlite, 2),
        "added_ms_postgres": round(added_pg, 2),
        "ratio": round(added_pg / added_sqlite, 3),
        "runs_per_s_at_50": {
            "sqlite": round(sqlite.runs_per_s, 1),
            "postgres": round(postgres.runs_per_s, 1),
        },
    }
