"""How the CLI shows journal events and sessions: one readable line per event."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from rich.markup import escape
from rich.table import Table
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
            f"[dim]{e.tokens_in}+{e.tokens_out} tok ${e.cost_usd:.5f} {e.latency_ms:.0f} ms[/] "
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


def sessions_table(rows: list[dict[str, Any]]) -> Table:
    """A table of sessions (dicts as from `SessionRow.to_dict`)."""
    table = Table(show_edge=False, header_style="bold")
    for col in ("id", "status", "agent", "steps", "tokens", "cost", "age", "goal"):
        table.add_column(
            col,
            justify="right" if col in ("steps", "tokens", "cost") else "left",
            no_wrap=col in ("id", "status"),
        )
    now = dt.datetime.now().timestamp()
    for r in rows:
        style = STATUS_STYLE.get(r["status"], "")
        table.add_row(
            r["id"],
            Text(r["status"], style=style),
            r["agent"],
            str(r["steps"]),
            str(r["tokens_in"] + r["tokens_out"]),
            f"${r['cost_usd']:.4f}",
            age(now - r["created_at"]),
            _short(r["goal"], 50),
        )
    return table


def age(seconds: float) -> str:
    """A compact age: 42s, 7m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
