"""The session page's span waterfall: the trace of `nexus traces show`, one row per
span, each a bar placed on the session's time axis.

Server-rendered: the bars are SVG rectangles whose `x` and `width` are attributes in
percent of the session's duration (the page's CSP forbids inline styles, not SVG
geometry), coloured by classes from `nexus.css`. Re-rendered with the other panels on
every live update, so a running session's open spans grow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nexus.format import money
from nexus.observe.spans import Span, build_trace
from nexus.server.dashboard import format as fmt

if TYPE_CHECKING:
    from nexus.server.dashboard.registry import View

MAX_ROWS = 300
MIN_WIDTH = 0.3  # percent: a 1 ms tool call in an hour-long session stays visible


@dataclass(frozen=True, slots=True)
class Row:
    """One span of the waterfall."""

    span_id: str
    name: str
    operation: str
    status: str
    open: bool
    depth: int
    x: float  # percent of the session's time from its start
    width: float  # percent
    duration: str
    detail: str  # tokens, cost, attempt: what the bar's tooltip and the row add
    error: str | None


@dataclass(frozen=True, slots=True)
class Mark:
    """A control-flow event on the session's row (paused, resumed, killed...)."""

    name: str
    x: float
    seq: int


def waterfall(view: View) -> dict[str, Any]:
    """The rows and marks of the view's session's trace, and its time scale."""
    if view.session is None:
        return {"rows": [], "marks": [], "total": "", "more": 0}
    events = view.state.runtime.journal.events(view.session.id)
    trace = build_trace(events)
    root = trace.root
    start = root.start
    # An open session's spans run to now: the bars of what is still running grow.
    end = root.end if root.end is not None else max(time.time(), events[-1].ts)
    total = max(end - start, 1e-6)
    spans = [(span, depth) for span, depth in _walk(root, 0)]
    rows = [_row(span, depth, start, end, total) for span, depth in spans[:MAX_ROWS]]
    marks = [
        Mark(e.name, round(100 * (e.ts - start) / total, 3), e.seq)
        for e in root.events
        if e.name not in ("session.started", "session.completed")
    ]
    return {
        "rows": rows,
        "marks": marks,
        "total": fmt.duration(total),
        "more": max(0, len(spans) - MAX_ROWS),
    }


def _walk(span: Span, depth: int) -> list[tuple[Span, int]]:
    out = [(span, depth)]
    for child in span.children:
        out.extend(_walk(child, depth + 1))
    return out


def _row(span: Span, depth: int, start: float, end: float, total: float) -> Row:
    span_end = span.end if span.end is not None else end
    x = min(100.0, max(0.0, 100 * (span.start - start) / total))
    width = min(100.0 - x, max(MIN_WIDTH, 100 * (span_end - span.start) / total))
    details = []
    if span.tokens_in or span.tokens_out:
        details.append(f"{fmt.count(span.tokens_in)} in / {fmt.count(span.tokens_out)} out")
    if span.cost_usd:
        details.append(money(span.cost_usd) + (" estimated" if span.cost_estimated else ""))
    if span.attempt is not None and span.attempt > 1:
        details.append(f"attempt {span.attempt}")
    duration = "open" if span.open else fmt.latency(span.duration_ms)
    error = None
    if span.error:
        error = f"{span.error_type}: {span.error}" if span.error_type else span.error
    return Row(
        span_id=span.span_id,
        name=span.name,
        operation=span.operation,
        status=span.status,
        open=span.open,
        depth=min(depth, 3),
        x=round(x, 3),
        width=round(max(0.0, width), 3),
        duration=duration,
        detail=" · ".join(details),
        error=error,
    )
