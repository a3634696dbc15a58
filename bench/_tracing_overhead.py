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


def _runtime(url: str, home: Path, *, on: bool, otlp: str | None) -> Any:
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
    limits = Limits(loops=LoopPolicy(enabled=False))
    if on:
        provider.update(price_in_per_1m=0.15, price_out_per_1m=0.6)
        extra["budgets"] = [{"scope": "global", "usd": 1_000_000.0, "window_s": 3600}]
        limits = Limits(max_cost_usd=1000.0, loops=LoopPolicy())
        if otlp is not None:
            extra.update(_otlp_settings(otlp))
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


def _durable(url: str, home: Path, *, on: bool, otlp: str | None) -> Any:
    return durable_runs(_runtime(url, home, on=on, otlp=otlp), "on" if on else "off")


async def overhead(runs: int, tmp: Path) -> dict[str, Any]:
    """Off / on / off / on, pooled: per-run time with observability on over off."""
    from bench._otlp_sink import OtlpSink

    counter = RunCounter()
    halves: dict[str, list[Any]] = {"off": [], "on": []}
    with PeerProcess() as peer, OtlpSink() as sink:
        for round_ in range(2):
            for side in ("off", "on"):
                home = tmp / f"{side}-{round_}"
                async with _durable(peer.url, home, on=side == "on", otlp=sink.endpoint) as run:
                    m = await measure(
                        run, warmup=20, runs=runs, inflight=16, concurrent_runs=runs,
                        peer=peer, counter=counter,
                    )  # fmt: skip
                halves[side].append(m)
        exported = sink.spans()
    off = pooled(*halves["off"])
    on = pooled(*halves["on"])
    ratio = on.mean_ms / off.mean_ms
    return {
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
    print("\nobservability off against on, the durable agent run (pooled, two rounds each)")
    print(f"{'':10}{'mean ms':>10}{'p50 ms':>10}{'cpu ms':>10}{'runs/s @16':>12}")
    for side in ("off", "on"):
        m = r[side]
        print(f"{side:10}{m['mean_ms']:>10.2f}{m['p50_ms']:>10.2f}{m['cpu_ms']:>10.2f}"
              f"{m['runs_per_s']:>12.1f}")  # fmt: skip
    verdict = "met" if r["met"] else "NOT met"
    print(f"on / off per run: {r['on_over_off_mean']}x mean, {r['on_over_off_p50']}x p50 "
          f"(target <= {TARGET}x: {verdict}); OTLP export configured: {r['otlp_configured']}, "
          f"spans received by the sink: {r['spans_received']}")  # fmt: skip
