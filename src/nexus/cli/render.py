"""How the CLI shows journal events and sessions: one readable line per event."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from rich.markup import escape
from rich.text import Text

from nexus.types import Event

STATUS_STYLE = {
    "queued": "cyan",
    "running": "blue",
    "paused": "yellow",
    "awaiting_approval": "magenta",
    "completed": "green",
    "failed": "red",
    "killed": "red",
}


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "⏎")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def event_line(e: Event) -> Text:
    """One timeline line: time, seq, kind, and what matters for that kind."""
    p = e.payload
    head = f"[dim]{_clock(e.ts)} #{e.seq:<3}[/dim] "
    k = e.kind
    if k == "llm.response":
        msg = p.get("message", {})
        calls = [c["function"]["name"] for c in msg.get("tool_calls") or ()]
        said = f"→ calls {', '.join(calls)}" if calls else f"→ {_short(msg.get('content') or '')}"
        body = (
            f"[bold magenta]llm[/] {escape(p.get('model', ''))} "
            f"[dim]{e.tokens_in}+{e.tokens_out} tok {money(e.cost_usd)} {e.latency_ms:.0f} ms[/] "
            f"{escape(said)}"
        )
    elif k == "tool.call":
        body = f"[bold cyan]tool[/] {escape(p['name'])}({escape(_short(p['arguments'], 100))})"
    elif k == "tool.result":
        if "error" in p:
            body = f"[bold red]tool error[/] {escape(p['name'])}: {escape(_short(p['error']))}"
        else:
            body = (
                f"[bold cyan]tool result[/] {escape(p['name'])} [dim]{e.latency_ms:.0f} ms[/] "
                f"{escape(_short(p.get('result')))}"
            )
    elif k == "llm.request":
        shown = "retry " if p.get("attempt", 1) > 1 else ""
        body = (
            f"[magenta]llm request[/] {shown}step {p.get('step')} "
            f"[dim]{len(p.get('messages') or ())} new messages, {p.get('tools', 0)} tools[/]"
        )
    elif k == "session.completed":
        # The answer is the content of the llm.response just before: stored once.
        body = f"[bold green]completed[/] [dim]{p.get('steps', 0)} steps[/]"
    elif k == "session.failed":
        body = f"[bold red]failed[/] {escape(_short(p.get('reason', ''), 300))}"
    elif k == "session.created":
        body = (
            f"[bold]created[/] agent={escape(p.get('agent', ''))} goal={escape(_short(p['goal']))}"
        )
    else:
        body = f"[bold]{escape(k)}[/] [dim]{escape(_short(p, 100))}[/]"
    return Text.from_markup(head + body)


COLUMNS = ("id", "status", "agent", "steps", "tokens", "cost", "age", "goal")
WIDE = (
    "id",
    "status",
    "agent",
    "priority",
    "steps",
    "tokens",
    "cost",
    "age",
    "labels",
    "reason",
    "goal",
)
RIGHT = frozenset({"steps", "tokens", "cost", "priority"})
DROPPABLE = ("reason", "labels", "priority", "tokens", "agent", "age", "steps")
MIN_GOAL = 10


def session_cells(r: dict[str, Any], now: float) -> dict[str, str]:
    """A session's values as the list shows them (goal on one line, never cut here)."""
    return {
        "id": r["id"],
        "status": r["status"],
        "agent": r["agent"],
        "priority": str(r["priority"]),
        "steps": str(r["steps"]),
        "tokens": str(r["tokens_in"] + r["tokens_out"]),
        "cost": money(r["cost_usd"]),
        "age": age(now - r["created_at"]),
        "labels": labels(r["labels"]) or "-",
        "reason": one_line(r.get("reason") or "-"),
        "goal": one_line(r["goal"]),
    }


def sessions_lines(
    rows: list[dict[str, Any]],
    *,
    width: int | None,
    wide: bool = False,
    headers: bool = True,
    color: bool = False,
    now: float | None = None,
) -> list[str]:
    """Aligned plain columns, one line per session (kubectl's table, without boxes).

    With a `width` (a terminal), the goal gets what the other columns leave and is
    clipped with "…", so a line never wraps; ids, statuses and costs are never cut.
    Without one (piped), nothing is clipped."""
    now = dt.datetime.now().timestamp() if now is None else now
    cols = list(WIDE if wide else COLUMNS)
    cells = [session_cells(r, now) for r in rows]
    table = ([{c: c.upper() for c in cols}] if headers else []) + cells
    widths = {c: max((len(t[c]) for t in table), default=0) for c in cols}

    def fixed() -> int:
        return sum(widths[c] + 2 for c in cols if c != "goal")

    if width is not None:
        # Too narrow for every column and a readable goal: drop the least needed
        # first; ids, statuses and costs stay whole.
        for optional in DROPPABLE:
            if fixed() + MIN_GOAL <= width:
                break
            if optional in cols:
                cols.remove(optional)
    goal_width = None if width is None else max(MIN_GOAL, width - fixed())
    out = []
    for i, t in enumerate(table):
        parts = []
        for c in cols:
            value = t[c]
            if c == "goal":
                parts.append(clip(value, goal_width))
                continue
            cell = value.rjust(widths[c]) if c in RIGHT else value.ljust(widths[c])
            if color and c == "status" and (i > 0 or not headers):
                style = STATUS_STYLE.get(value)
                cell = f"[{style}]{cell}[/]" if style else cell
            elif color:
                cell = escape(cell)
            parts.append(cell)
        line = "  ".join(parts).rstrip()
        out.append(f"[bold]{line}[/]" if color and headers and i == 0 else line)
    return out


def money(usd: float) -> str:
    """The one money format of NEXUS (CLI, API docs, dashboard)."""
    from nexus.format import money as fmt

    return fmt(usd)


def labels(values: dict[str, str]) -> str:
    """Labels as `k=v,k2=v2`, sorted by key."""
    return ",".join(f"{k}={v}" for k, v in sorted(values.items()))


def one_line(text: str) -> str:
    """Text on one line (newlines and tabs as spaces, runs collapsed)."""
    return " ".join(text.split())


def clip(text: str, width: int | None) -> str:
    """`text` cut to `width` characters with "…" (None: as is)."""
    if width is None or len(text) <= width:
        return text
    return text[: max(0, width - 1)] + "…"


def when(ts: float, now: float | None = None) -> str:
    """A local time with its age: `2026-12-02 15:04:05 (3m ago)`."""
    now = dt.datetime.now().timestamp() if now is None else now
    stamp = dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} ({age(max(0.0, now - ts))} ago)"


def duration(seconds: float) -> str:
    """A run's length: 850ms, 4.2s, 3m07s, 2h05m."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def summary(r: dict[str, Any]) -> str:
    """The last line of `nexus run`: status, steps, tokens, cost, duration."""
    tokens = r["tokens_in"] + r["tokens_out"]
    parts = [
        r["status"],
        f"{r['steps']} steps",
        f"{tokens} tokens",
        money(r["cost_usd"]),
        duration(max(0.0, r["updated_at"] - r["created_at"])),
    ]
    return " · ".join(parts)


def status_lines(r: dict[str, Any], now: float | None = None) -> list[tuple[str, str]]:
    """`nexus status`: (field, value) pairs for people; `--json` has the raw row."""
    tokens = f"{r['tokens_in'] + r['tokens_out']} ({r['tokens_in']} in, {r['tokens_out']} out)"
    return [
        ("id", r["id"]),
        ("status", r["status"]),
        ("reason", r.get("reason") or "-"),
        ("agent", r["agent"]),
        ("goal", one_line(r["goal"])),
        ("priority", str(r["priority"])),
        ("labels", labels(r["labels"]) or "-"),
        ("steps", str(r["steps"])),
        ("tokens", tokens),
        ("cost", money(r["cost_usd"])),
        ("created", when(r["created_at"], now)),
        ("updated", when(r["updated_at"], now)),
        ("duration", duration(max(0.0, r["updated_at"] - r["created_at"]))),
    ]


def age(seconds: float) -> str:
    """A compact age: 42s, 7m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
