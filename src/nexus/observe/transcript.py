"""A session's conversation as a person reads it: the goal, what the model said,
each tool call with its arguments and its result or error, operator notes, and
where the session paused, resumed or ended. Folded from the journal like every
other view (`Transcript` is a `Projection`), so it reads the same for a running
session, a finished one and one resumed after a crash.

The entries keep the journal's order. A tool call sits under the assistant turn
that made it, and its result (or error, or a guard's refusal) joins it when the
`tool.result` arrives; a call retried after a crash counts its attempts.
Nothing here is markup: the dashboard escapes every text it shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from nexus import events as ev
from nexus.types import JSON, Event, Projection

Role = Literal["system", "goal", "assistant", "note", "status", "failure"]

LONG_CHARS = 600
"""A block of more characters than this is folded (the dashboard's `<details>`)."""
LONG_LINES = 12
PREVIEW_CHARS = 100
INLINE_CHARS = 72
"""Arguments whose `name=value` list is at most this long read inline, `lookup(key="a")`."""


@dataclass(frozen=True, slots=True)
class Block:
    """A text to show in full, or folded behind its first line when long."""

    text: str
    long: bool
    preview: str
    lines: int

    @classmethod
    def of(cls, value: Any) -> Block:
        """A block of `value`: text as is, anything else as indented JSON."""
        text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
        lines = text.count("\n") + 1
        first = text.strip().split("\n", 1)[0] if text.strip() else ""
        preview = first if len(first) <= PREVIEW_CHARS else first[: PREVIEW_CHARS - 1] + "…"
        return cls(text, len(text) > LONG_CHARS or lines > LONG_LINES, preview, lines)


@dataclass(slots=True)
class ToolTurn:
    """One tool call of an assistant turn and, once it is known, its outcome."""

    step: int
    call_id: str
    name: str
    arguments: Block
    inline: str | None  # `key="a", n=2` when the arguments read on one line
    attempts: int = 0  # tool.call events seen (0: refused before it started)
    outcome: Literal["pending", "ok", "error", "refused"] = "pending"
    result: Block | None = None
    error: str = ""
    error_type: str = ""
    by: str = ""  # the guard that refused it
    latency_ms: float = 0.0


@dataclass(slots=True)
class Entry:
    """One line of the transcript: who speaks (`role`) and what."""

    role: Role
    seq: int
    ts: float
    text: str = ""
    kind: str = ""  # the event kind of a status entry (paused, resumed, killed, failed)
    by: str = ""  # who decided a note, pause or kill
    model: str = ""
    step: int = 0
    final: bool = False  # the session's answer
    calls: list[ToolTurn] = field(default_factory=list)


@dataclass(slots=True)
class TranscriptState:
    """The entries so far, and the open calls by step (to attach their results)."""

    entries: list[Entry] = field(default_factory=list)
    calls: dict[int, ToolTurn] = field(default_factory=dict)
    ended: bool = False


class Transcript(Projection[TranscriptState]):
    """The conversation folded from a session's events."""

    name: ClassVar[str] = "transcript"

    def initial(self) -> TranscriptState:
        return TranscriptState()

    def apply(self, state: TranscriptState, event: Event) -> TranscriptState:
        k, p = event.kind, event.payload

        def add(role: Role, text: str = "", **kw: Any) -> Entry:
            entry = Entry(role, event.seq, event.ts, text, **kw)
            state.entries.append(entry)
            return entry

        if k == ev.SESSION_CREATED:
            spec = p.get("spec") or {}
            if spec.get("system_prompt"):
                add("system", str(spec["system_prompt"]))
            add("goal", str(p.get("goal", "")))
        elif k == ev.LLM_RESPONSE:
            msg = p.get("message") or {}
            step = int(p.get("step", 0))
            entry = add("assistant", str(msg.get("content") or ""), model=str(p.get("model", "")))
            entry.step = step
            for i, call in enumerate(msg.get("tool_calls") or ()):
                fn = call.get("function") or {}
                turn = _turn(step + i + 1, str(call.get("id") or ""), fn)
                entry.calls.append(turn)
                state.calls[turn.step] = turn
        elif k == ev.TOOL_CALL:
            started = state.calls.get(int(p.get("step", 0)))
            if started is not None:
                started.attempts = max(started.attempts, int(p.get("attempt", 1)))
        elif k == ev.TOOL_RESULT:
            answered = state.calls.pop(int(p.get("step", 0)), None)
            if answered is not None:
                _settle(answered, p, event.latency_ms)
        elif k == ev.LLM_FAILED:
            by = str(p.get("by", ""))
            why = f"{p.get('error_type', 'Error')}: {p.get('error', '')}"
            add("failure", why, by="" if by == "execute" else by, step=int(p.get("step", 0)))
        elif k == ev.SESSION_CONTROL and p.get("note"):
            add("note", str(p["note"]), by=str(p.get("by", "")))
        elif k in (ev.SESSION_PAUSED, ev.SESSION_KILLED, ev.SESSION_FAILED):
            add("status", str(p.get("reason", "")), by=str(p.get("by", "")), kind=k)
        elif k == ev.SESSION_RESUMED:
            add("status", kind=k)
        elif k == ev.SESSION_COMPLETED:
            answer = int(p.get("answer_step", 0))
            for entry in reversed(state.entries):
                if entry.role == "assistant" and entry.step == answer:
                    entry.final = True
                    break
        if k in ev.TERMINAL_KINDS:
            state.ended = True
        return state


def _turn(step: int, call_id: str, fn: JSON) -> ToolTurn:
    raw = fn.get("arguments") or ""
    try:
        args: Any = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        args = raw  # the model's text as it came: shown, never parsed again
    return ToolTurn(step, call_id, str(fn.get("name", "")), Block.of(args), _inline(args))


def _inline(args: Any) -> str | None:
    """`key="a", n=2` for an object of a few short scalars, else None."""
    if not isinstance(args, dict):
        return None
    if any(isinstance(v, dict | list) for v in args.values()):
        return None
    text = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    return text if len(text) <= INLINE_CHARS and "\n" not in text else None


def _settle(turn: ToolTurn, p: JSON, latency_ms: float) -> None:
    turn.latency_ms = latency_ms
    if turn.attempts:  # 0: refused before it started, no attempt was made
        turn.attempts = max(turn.attempts, int(p.get("attempt", 1)))
    if "error" in p:
        turn.outcome = "refused" if p.get("by") else "error"
        turn.error = str(p["error"])
        turn.error_type = str(p.get("error_type") or "Error")
        turn.by = str(p.get("by") or "")
    else:
        turn.outcome = "ok"
        turn.result = Block.of(p.get("result", ""))


def transcript(events: Iterable[Event]) -> TranscriptState:
    """The transcript of a session's events (in journal order)."""
    projection = Transcript()
    state = projection.initial()
    for event in events:
        state = projection.apply(state, event)
    return state
