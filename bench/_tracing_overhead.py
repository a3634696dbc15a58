"""The `overhead` part of bench.tracing: the durable agent run of bench.agent_step
(scenario b) with observability off and on, measured off / on / off / on in one run
and pooled per side.

Off: no OTLP endpoint, unpriced calls, no budgets, the loop guard disabled.
On: spans exported over OTLP/HTTP to a local receiver (another process's port, so
its decoding does not count here), calls priced (costed per request), the loop
guard on, a global budget and a session budget (a reservation per call)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench._agent_scenarios import SYSTEM, _lookup, durable_runs
from bench._common import PeerProcess, RunCounter, measure, pooled

TARGET = 1.05

FEATURES = ("otlp", "prices", "loops", "session_budget", "global_budget")
"""What "on" turns on, each of which `--parts` measures alone against off."""


def _runtime(url: str, home: Path, *, on: frozenset[str], otlp: str | None) -> Any:
    from nexus.config import load_settings
    from nexus.runtime.agents import Agent, AgentRegistry, Limits, LoopPolicy
    from nexus.runtime.runtime import Runtime
    from nexus.runtime.tools import Toolkit, tool

    @tool(effect="read")
    async def lookup(key: str) -> str:
        """Look up the value stored under a key.

        Args:
            key: the key to look up.
        """
        return await _lookup(key)

    provider: dict[str, Any] = {"name": "peer", "base_url": url, "model": "m"}
    extra: dict[str, Any] = {}
    if on & {"prices", "session_budget", "global_budget"}:  # a budget needs prices
        provider.update(price_in_per_1m=0.15, price_out_per_1m=0.6)
    if "global_budget" in on:
        extra["budgets"] = [{"scope": "global", "usd": 1_000_000.0, "window_s": 3600}]
    if "otlp" in on and otlp is not None:
        extra.update(_otlp_settings(otlp))
    limits = Limits(
        max_cost_usd=1000.0 if "session_budget" in on else None,
        loops=LoopPolicy(enabled="loops" in on),
    )
    settings = load_settings(home=home, providers=[provider], concurrency=64, **extra)
    agents = AgentRegistry()
    kit = Toolkit("bench", [lookup])
    agents.add(Agent(name="bench", toolkits=(kit,), system_prompt=SYSTEM, limits=limits))
    return Runtime(settings, agents=agents)


def _otlp_settings(endpoint: str) -> dict[str, Any]:
    """The settings that switch OTLP export on, if this NEXUS has it."""
    from nexus.config import Settings

    fields = Settings.model_fields
    for name in ("otlp_endpoint", "otel_endpoint", "trace_endpoint"):
        if name in fields:
            return {name: endpoint}
    return {}


def _durable(url: str, home: Path, *, on: frozenset[str], otlp: str | None) -> Any:
    return durable_runs(_runtime(url, home, on=on, otlp=otlp), "on" if on else "off")


async def _measured(
    peer: PeerProcess, sink: Any, counter: RunCounter, home: Path, on: frozenset[str], runs: int
) -> Any:
    """One variant's `Measurement`, on a runtime of its own."""
    async with _durable(peer.url, home, on=on, otlp=sink.endpoint) as run:
        return await measure(
            run, warmup=20, runs=runs, inflight=16, concurrent_runs=runs,
            peer=peer, counter=counter,
        )  # fmt: skip


async def overhead(runs: int, tmp: Path, *, latency_ms: float = 0) -> dict[str, Any]:
    """Off / on / off / on, pooled: per-run time with observability on over off
    (the model peer answering after `latency_ms`)."""
    from bench._otlp_sink import OtlpSink

    counter = RunCounter()
    halves: dict[str, list[Any]] = {"off": [], "on": []}
    with PeerProcess(latency_ms=latency_ms) as peer, OtlpSink() as sink:
        for round_ in range(2):
            for side in ("off", "on"):
                features = frozenset(FEATURES if side == "on" else ())
                home = tmp / f"{side}-{round_}"
                halves[side].append(await _measured(peer, sink, counter, home, features, runs))
        exported = sink.spans()
    off = pooled(*halves["off"])
    on = pooled(*halves["on"])
    ratio = on.mean_ms / off.mean_ms
    return {
        "peer_latency_ms": latency_ms,
        "off": off.to_dict(),
        "on": on.to_dict(),
        "on_over_off_mean": round(ratio, 4),
        "on_over_off_p50": round(on.p50_ms / off.p50_ms, 4),
        "loaded_runs_per_s_ratio": round(on.runs_per_s / off.runs_per_s, 4),
        "spans_received": exported,
        "otlp_configured": bool(_otlp_settings(sink.endpoint)),
        "met": ratio <= TARGET,
        "median_cpu_ms": {"off": round(off.cpu_ms, 3), "on": round(on.cpu_ms, 3)},
        "stdev_off_ms": round(statistics.pstdev(off.samples_ms), 3),
    }


def print_overhead(r: dict[str, Any]) -> None:
    """The part's table."""
    print("\nobservability off against on, the durable agent run (pooled, two rounds each; "
          f"the model answers after {r['peer_latency_ms']:g} ms)")  # fmt: skip
    print(f"{'':10}{'mean ms':>10}{'p50 ms':>10}{'cpu ms':>10}{'runs/s @16':>12}")
    for side in ("off", "on"):
        m = r[side]
        print(f"{side:10}{m['mean_ms']:>10.2f}{m['p50_ms']:>10.2f}{m['cpu_ms']:>10.2f}"
              f"{m['runs_per_s']:>12.1f}")  # fmt: skip
    verdict = "met" if r["met"] else "NOT met"
    print(f"on / off per run: {r['on_over_off_mean']}x mean, {r['on_over_off_p50']}x p50 "
          f"(target <= {TARGET}x: {verdict}); OTLP export configured: {r['otlp_configured']}, "
          f"spans received by the sink: {r['spans_received']}")  # fmt: skip


async def parts(runs: int, tmp: Path) -> dict[str, Any]:
    """Where "on" costs: off, each feature alone and all of them, two rounds in turn,
    pooled; per variant its added mean, p50 and CPU time per run over off's."""
    from bench._otlp_sink import OtlpSink

    variants = {"off": frozenset(), **{f: frozenset((f,)) for f in FEATURES}}
    variants["all"] = frozenset(FEATURES)
    counter = RunCounter()
    found: dict[str, list[Any]] = {name: [] for name in variants}
    with PeerProcess() as peer, OtlpSink() as sink:
        for round_ in range(2):
            order = list(variants) if round_ == 0 else list(reversed(variants))
            for name in order:
                home = tmp / f"part-{name}-{round_}"
                found[name].append(await _measured(peer, sink, counter, home, variants[name], runs))
    off = pooled(*found["off"])
    out: dict[str, Any] = {"off": off.to_dict()}
    for name in variants:
        if name == "off":
            continue
        m = pooled(*found[name])
        out[name] = {
            "added_mean_ms": round(m.mean_ms - off.mean_ms, 3),
            "added_p50_ms": round(m.p50_ms - off.p50_ms, 3),
            "added_cpu_ms": round(m.cpu_ms - off.cpu_ms, 3),
            "over_off_mean": round(m.mean_ms / off.mean_ms, 4),
        }
    return out


def print_parts(r: dict[str, Any]) -> None:
    """The parts' table."""
    off = r["off"]
    print(f"\nper feature, alone against off (off: {off['mean_ms']:.2f} ms mean, "
          f"{off['p50_ms']:.2f} ms p50, {off['cpu_ms']:.2f} ms CPU per run)")  # fmt: skip
    print(f"{'':16}{'+mean ms':>10}{'+p50 ms':>10}{'+cpu ms':>10}{'x off':>8}")
    for name, m in r.items():
        if name != "off":
            print(f"{name:16}{m['added_mean_ms']:>10.3f}{m['added_p50_ms']:>10.3f}"
                  f"{m['added_cpu_ms']:>10.3f}{m['over_off_mean']:>8.3f}")  # fmt: skip
