"""What `bench.kill` kills and how it reads the outcome.

The sessions run a file-writing agent against the peer LLM: every answer of the
peer is a call of the workspace's `write_file` for a new file (`e0000.txt`,
`e0001.txt`, ...), so every turn is an LLM call (the peer's latency) followed by
a real side effect, a file in the session's workspace. The agent is a TOML file
in the home, so that `nexus worker` in another process runs the very same agent
with no bench code inside it.

A kill's two moments come from the journal, which both processes can read:

* (a) *no further side effect*: the runner's first reaction to the kill, the
  earliest event after the kill call that is either a step cut short
  (`interrupted` in `llm.failed`, or a `tool.result` whose error says
  `interrupted:`) or `session.killed` itself. From then on the guard refuses
  every step. Its `ts` is stamped as the event is sealed, just after the
  runner has taken the kill and cancelled the step, so (a) is an upper bound.
* (b) `session.killed`: its `ts`, stamped just before its commit.

The side effects are checked against (a): a file written after it is a
violation. File times come from the kernel's coarse clock (a tick, 1-4 ms, late
at most: a violation found is real, one closer than a tick can be missed).
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus import events as ev
from nexus.types import Event

AGENT = "killbench"
KILLED_BY = "bench:kill"
TURNS = 3000  # past its end the peer answers "done": a session would complete unkilled

_AGENT_TOML = f"""\
name = "{AGENT}"
system_prompt = "Write one file per turn with write_file, forever."
toolkits = ["workspace"]

[limits]
max_steps = 1000000
"""


def write_agent(home: Path) -> None:
    """Put the agent's TOML file in the home, for this process and any worker."""
    agents = home / "agents"
    agents.mkdir(parents=True, exist_ok=True)
    (agents / f"{AGENT}.toml").write_text(_AGENT_TOML, encoding="utf-8")


def script_peer(peer_url: str) -> None:
    """Make every answer of the peer (`.../v1`) a `write_file` call of a new file."""
    script = [
        {
            "tool_calls": [
                {"name": "write_file", "arguments": {"path": f"e{t:04d}.txt", "content": "x"}}
            ]
        }
        for t in range(TURNS)
    ]
    root = peer_url.removesuffix("/v1")
    request = urllib.request.Request(
        f"{root}/_peer/config",
        data=json.dumps({"script": script}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
        response.read()


def providers_json(peer_url: str) -> str:
    """`NEXUS_PROVIDERS` for the peer."""
    return json.dumps([{"name": "peer", "base_url": peer_url, "model": "m"}])


@dataclass(frozen=True)
class Kill:
    """One kill as the bench sent it (wall clock, seconds)."""

    session_id: str
    command_id: int
    start: float  # just before `control.post`
    posted: float  # `control.post` returned


@dataclass(frozen=True)
class Sample:
    """What one kill took, in ms from the kill call's start, and what it left."""

    session_id: str
    post_ms: float
    stopped_ms: float  # (a)
    killed_ms: float  # (b)
    cut: str  # what the kill cut short: "llm", "tool" or "between steps"
    effects: int  # files the session wrote
    effects_after_kill_call: int  # written after the kill call started, before (a)
    late_ms: tuple[float, ...]  # files written after (a): violations, ms after it
    story: tuple[str, ...] = ()  # for a violation: the journal around the kill


def _reaction(event: Event) -> bool:
    payload = event.payload if isinstance(event.payload, dict) else {}
    error = payload.get("error")
    return (
        event.kind == ev.SESSION_KILLED
        or "interrupted" in payload
        or (isinstance(error, str) and error.startswith("interrupted:"))
    )


def _brief(event: Event) -> str:
    payload = event.payload if isinstance(event.payload, dict) else {}
    shown = {k: payload[k] for k in ("name", "interrupted", "error", "result") if k in payload}
    return json.dumps(shown, default=str)[:200]


def _cut(event: Event) -> str:
    if event.kind == ev.SESSION_KILLED:
        return "between steps"
    return "tool" if event.kind == ev.TOOL_RESULT else "llm"


def sample(kill: Kill, events: list[Event], workspace: Path) -> Sample:
    """Read one kill's moments from its session's journal and workspace.

    Raises:
        RuntimeError: the session did not end killed by this kill.
    """
    last = events[-1]
    payload = last.payload if isinstance(last.payload, dict) else {}
    if last.kind != ev.SESSION_KILLED or payload.get("command") != kill.command_id:
        raise RuntimeError(f"session {kill.session_id} ended with {last.kind}: {payload}")
    reaction = next(e for e in events if e.ts >= kill.start and _reaction(e))
    mtimes = [p.stat().st_mtime for p in workspace.glob("e*.txt")]
    late = tuple(round((t - reaction.ts) * 1000, 2) for t in mtimes if t > reaction.ts)
    story = tuple(
        f"{(e.ts - kill.start) * 1000:+.2f} ms {e.kind} {_brief(e)}"
        for e in events
        if late and e.ts >= kill.start - 1.0
    )
    return Sample(
        session_id=kill.session_id,
        post_ms=(kill.posted - kill.start) * 1000,
        stopped_ms=(reaction.ts - kill.start) * 1000,
        killed_ms=(last.ts - kill.start) * 1000,
        cut=_cut(reaction),
        effects=len(mtimes),
        effects_after_kill_call=sum(kill.start < t <= reaction.ts for t in mtimes),
        late_ms=late,
        story=story,
    )


def summary(samples: list[Sample], wall_s: float, llm_calls: int) -> dict[str, Any]:
    """p50/p99/max of (a), (b) and the post call; what was cut; the checks."""
    from bench._common import percentile

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(percentile(values, 0.5), 2),
            "p99_ms": round(percentile(values, 0.99), 2),
            "max_ms": round(max(values), 2),
        }

    cuts: dict[str, int] = {}
    for s in samples:
        cuts[s.cut] = cuts.get(s.cut, 0) + 1
    return {
        "sessions": len(samples),
        "a_no_further_effect": stats([s.stopped_ms for s in samples]),
        "b_killed_journaled": stats([s.killed_ms for s in samples]),
        "post_call": stats([s.post_ms for s in samples]),
        "cut": cuts,
        "effects": sum(s.effects for s in samples),
        "effects_after_kill_call": sum(s.effects_after_kill_call for s in samples),
        "effects_after_stop": sum(len(s.late_ms) for s in samples),
        "late_effects": [
            {
                "session_id": s.session_id,
                "cut": s.cut,
                "ms_after_a": list(s.late_ms),
                "post_ms": round(s.post_ms, 2),
                "journal_from_kill_call": list(s.story),
            }
            for s in samples
            if s.late_ms
        ],
        "llm_calls_per_s": round(llm_calls / wall_s, 1) if wall_s > 0 else None,
    }
