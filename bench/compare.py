"""`python -m bench.compare --before REF`: NEXUS's agent step before and after a
change, in one run.

The code at REF is checked out into a temporary git worktree; then, for several
rounds, `bench.agent_step` runs the baseline (a), the journal-only run (b') and the
durable run (b) once in that tree and once in this one, alternating which goes
first (the machine is shared and noisy: interleaving spreads its drift over both).
Each round's p50 per scenario is read from the subprocess's JSON; the report gives
the median over rounds and the ratio after/before, with the targets of the
kernel-contracts issue: the durable run at most 10% slower, the journal-only run
at most 15%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._common import write_json

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("a", "b-inline", "b")
TARGETS = {"b": 1.10, "b-inline": 1.15}


def run_once(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    """One `bench.agent_step` run in `tree`; p50 ms per scenario."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src") + os.pathsep + str(tree))
    cmd = [
        sys.executable,
        "-m",
        "bench.agent_step",
        "--only",
        ",".join(SCENARIOS),
        "--skip-peers",
        "--no-journal",
        "--no-startup",
        "--runs",
        str(args.runs),
        "--warmup",
        str(args.warmup),
        "--concurrent-runs",
        str(args.concurrent_runs),
    ]
    subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, timeout=900)
    data = json.loads((tree / "bench" / "results" / "agent_step.json").read_text())
    return {k: float(v["p50_ms"]) for k, v in data["scenarios"].items() if k in SCENARIOS}


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print it; writes bench/results/compare.json."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git ref of the code before the change")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=200, help="sequential runs per scenario")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--concurrent-runs", type=int, default=100)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nexus-before-") as tmp:
        before = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.before],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            samples: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
            for i in range(args.rounds):
                order = [("before", before), ("after", ROOT)]
                for name, tree in order if i % 2 == 0 else reversed(order):
                    samples[name].append(run_once(tree, args))
                    print(f"round {i + 1} {name}: {samples[name][-1]}", flush=True)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False
            )
    report: dict[str, Any] = {"before": args.before, "rounds": args.rounds, "scenarios": {}}
    print(f"\np50 ms, median of {args.rounds} rounds   before    after   after/before")
    for key in SCENARIOS:
        b = statistics.median(s[key] for s in samples["before"])
        a = statistics.median(s[key] for s in samples["after"])
        ratio = a / b
        target = TARGETS.get(key)
        verdict = "" if target is None else ("PASS" if ratio <= target else "MISS")
        limit = "" if target is None else f"(target <= {target:.2f}) {verdict}"
        print(f"  {key:<10} {b:8.2f} {a:8.2f}   x{ratio:.3f} {limit}")
        report["scenarios"][key] = {
            "before_p50_ms": round(b, 3),
            "after_p50_ms": round(a, 3),
            "ratio": round(ratio, 4),
            "target": target,
            "ok": None if target is None else ratio <= target,
            "samples": {n: [s[key] for s in samples[n]] for n in samples},
        }
    path = write_json("compare", report)
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
