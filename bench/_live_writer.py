"""Worker A of `bench.live`, in its own process: appends paced journal events to one
session and records when each commit returned.

    python -m bench._live_writer --home DIR [--database-url URL] --events N --out FILE

It prints the session id once the session exists, waits for a line on stdin (the
benchmark's client is then subscribed), appends `--events` events one transaction
each, `--interval-ms` apart on average (uniform jitter of ±50%, so commits do not
keep step with a poll interval), and writes `{"session_id", "commits": {seq: t}}`
to `--out`, `t` being the wall clock just after the append returned.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from nexus.config import load_settings
from nexus.runtime.runtime import Runtime


def main(argv: list[str] | None = None) -> None:
    """Append, record, write the file."""
    p = argparse.ArgumentParser(prog="python -m bench._live_writer", description=__doc__)
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--database-url")
    p.add_argument("--events", type=int, default=300)
    p.add_argument("--interval-ms", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    overrides: dict[str, Any] = {"home": args.home}
    if args.database_url:
        overrides["database_url"] = args.database_url
    rt = Runtime(load_settings(**overrides))
    sid = rt.create_session("bench.live: paced events")
    print(sid, flush=True)
    sys.stdin.readline()
    rng = random.Random(args.seed)
    commits: dict[int, float] = {}
    for n in range(args.events):
        time.sleep(args.interval_ms * rng.uniform(0.5, 1.5) / 1000)
        event = rt.journal.append(sid, "bench.tick", {"n": n})
        commits[event.seq] = time.time()
    args.out.write_text(json.dumps({"session_id": sid, "commits": commits}), encoding="utf-8")
    rt.store.close()


if __name__ == "__main__":
    main()
