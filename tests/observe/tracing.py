"""What the trace tests share: scripted tools, and span trees with their timings
checked against the journal and then normalised (so a snapshot holds the structure,
the seqs of the events that open and close each span, and every attribute)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from nexus.runtime.agents import Agent, AgentRegistry
from nexus.runtime.tools import Toolkit, tool
from nexus.types import Event

VOLATILE_EVENT_KEYS = {"noticed_at"}  # a clock reading inside a payload


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the loop catches it."""


CRASH_ONCE: dict[str, bool] = {}


@tool(effect="read")
def echo(text: str) -> str:
    """Echo a text back."""
    return f"echo: {text}"


@tool(effect="read")
def explode(reason: str) -> str:
    """Always raise."""
    raise RuntimeError(reason)


@tool(effect="read")
def fragile(text: str) -> str:
    """Crash the 'process' the first time it runs."""
    if not CRASH_ONCE.get("done"):
        CRASH_ONCE["done"] = True
        raise Crash
    return f"fragile: {text}"


@tool(effect="read")
async def block(tag: str) -> str:
    """Run until cancelled (a kill)."""
    await asyncio.sleep(3600)
    return tag


KIT = Toolkit("trace", [echo, explode, fragile, block])


def agents() -> AgentRegistry:
    """One agent, `t`, with the tools above."""
    registry = AgentRegistry()
    registry.add(Agent(name="t", model="scripted-1", toolkits=(KIT,)))
    return registry


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def check_times(root: dict[str, Any], events: Iterable[Event]) -> None:
    """Every span starts and ends at the timestamps of the events whose seqs it names,
    and lies within its parent; its duration is end - start."""
    ts = {e.seq: e.ts for e in events}

    def walk(span: dict[str, Any], parent: dict[str, Any] | None) -> None:
        assert span["start"] == ts[span["start_seq"]], span["name"]
        if span["open"]:
            assert (span["end"], span["end_seq"], span["duration_ms"]) == (None, None, None)
        else:
            assert span["end"] == ts[span["end_seq"]], span["name"]
            assert span["duration_ms"] == round((span["end"] - span["start"]) * 1000, 3)
        if parent is not None:
            assert span["start"] >= parent["start"], span["name"]
            if not parent["open"] and not span["open"]:
                assert span["end"] <= parent["end"], span["name"]
        for e in span["events"]:
            assert e["ts"] == ts[e["seq"]]
        for child in span["children"]:
            assert child["parent_id"] == span["span_id"]
            walk(child, span)

    assert root["parent_id"] is None
    walk(root, None)


def shape(span: dict[str, Any], session_id: str) -> dict[str, Any]:
    """A span of `Span.to_dict()` without what changes from run to run: ids (the
    nesting says who is whose parent), clock times (the seqs stay), the session id."""
    out = {k: v for k, v in span.items() if k not in ("span_id", "parent_id", "start", "end")}
    out.pop("duration_ms")
    out["attributes"] = {
        k: ("<session>" if v == session_id else v) for k, v in span["attributes"].items()
    }
    out["events"] = [
        {
            "name": e["name"],
            "seq": e["seq"],
            "attributes": {
                k: v for k, v in e["attributes"].items() if k not in VOLATILE_EVENT_KEYS
            },
        }
        for e in span["events"]
    ]
    out["children"] = [shape(c, session_id) for c in span["children"]]
    return out
