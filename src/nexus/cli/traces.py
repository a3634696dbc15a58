"""`nexus traces show SESSION`: a session's span tree, rebuilt from its journal
(`nexus.observe.spans`), locally or from a server (`--server`, the trace API).

The `traces` group itself is `nexus.cli.observe`'s (with `nexus traces tools`)."""

from __future__ import annotations

import sys
from typing import Any

from rich.markup import escape
from rich.tree import Tree

from nexus.cli.app import JsonOpt, ServerOpt, _console, _print_json, _read, _resolve, _source
from nexus.cli.observe import traces_app
from nexus.format import money

STATUS_STYLE = {"ok": "green", "error": "red", "unset": "yellow"}


@traces_app.command("show")
def show(session_id: str, as_json: JsonOpt = False, server: ServerOpt = None) -> None:
    """A session's trace as a tree: the session, each agent step, each LLM call and
    tool call (one per attempt), with durations, tokens, cost, retries and failure
    reasons. SESSION may be any unique prefix of its id; `--json` prints the tree."""
    src = _source(server)
    session_id = _resolve(src, session_id)
    trace = _read(lambda: src.trace(session_id))
    if as_json:
        _print_json(trace)
        return
    console = _console()
    if not sys.stdout.isatty():
        console.width = 10_000  # into a file or a pipe: one line per span, never cut
    console.print(trace_tree(trace))
    sys.stdout.flush()


def trace_tree(trace: dict[str, Any]) -> Tree:
    """The trace document (`Trace.to_dict()`) as a rich tree; the root's events (pause,
    resume, kill...) appear among its steps, in journal order."""
    root = trace["root"]
    tree = Tree(span_line(root), guide_style="dim")
    items = [(c["start_seq"], 1, c) for c in root["children"]]
    items += [(e["seq"], 0, e) for e in root["events"]]
    for _, is_span, item in sorted(items, key=lambda i: (i[0], i[1])):
        if is_span:
            _add(tree, item)
        else:
            tree.add(event_line(item))
    return tree


def _add(parent: Tree, span: dict[str, Any]) -> None:
    node = parent.add(span_line(span))
    for child in span["children"]:
        _add(node, child)


def span_line(span: dict[str, Any]) -> str:
    """One span: name, status, duration, tokens, cost, attempt, and why it failed."""
    status = span["status"]
    style = STATUS_STYLE.get(status, "")
    parts = [
        f"[bold]{escape(span['name'])}[/]",
        f"[{style}]{'open' if span['open'] else status}[/]",
    ]
    if span["duration_ms"] is not None:
        parts.append(duration(span["duration_ms"]))
    if span["operation"] != "execute_tool" and (span["tokens_in"] or span["tokens_out"]):
        parts.append(f"{span['tokens_in']:,} in / {span['tokens_out']:,} out")
    if span["cost_usd"]:
        estimated = " (estimated)" if span["cost_estimated"] else ""
        parts.append(f"{money(span['cost_usd'])}{estimated}")
    if span["operation"] == "step" and span["attributes"].get("nexus.attempts", 1) > 1:
        parts.append(f"[yellow]{span['attributes']['nexus.attempts']} LLM attempts[/]")
    if span["attempt"] is not None and span["attempt"] > 1:
        parts.append(f"[yellow]attempt {span['attempt']}[/]")
    line = "  ".join(parts)
    if span["error"]:
        kind = f"{span['error_type']}: " if span["error_type"] else ""
        line += f"  [red]{escape(kind + span['error'])}[/]"
    if span["retry_reason"]:
        line += f"  [dim](retry: {escape(span['retry_reason'])})[/]"
    return line


def event_line(event: dict[str, Any]) -> str:
    """A control-flow event of the session (started, paused, killed...)."""
    a = event["attributes"]
    said = []
    if a.get("by"):
        said.append(f"by {a['by']}")
    if a.get("reason"):
        said.append(str(a["reason"]))
    text = f": {', '.join(said)}" if said else ""
    return f"[cyan]● {escape(event['name'])}[/] [dim]#{event['seq']}[/]{escape(text)}"


def duration(ms: float) -> str:
    """Milliseconds as people read them: `0.4 ms`, `12 ms`, `3.40 s`, `2 min 5 s`."""
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{minutes:.0f} min {seconds:.0f} s"
