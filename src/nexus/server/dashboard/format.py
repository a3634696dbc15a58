"""Jinja filters: how numbers, times and JSON read on the dashboard.

Pure functions of their input (plus "now" for ages), so the templates stay free
of logic and every format is tested once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nexus.format import money


def count(value: int | float | None) -> str:
    """A count, compact above ten thousand: `950`, `12.4k`, `3.1M`."""
    n = value or 0
    if abs(n) < 10_000:
        return f"{int(n):,}"
    if abs(n) < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"


def duration(seconds: float | None) -> str:
    """A span of time: `12 ms`, `3.4 s`, `5 min`, `2 h 10 min`, `3 d`."""
    s = seconds or 0.0
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s // 60:.0f} min"
    if s < 86400:
        h, rest = divmod(s, 3600)
        return f"{h:.0f} h {rest // 60:.0f} min" if rest >= 60 else f"{h:.0f} h"
    return f"{s // 86400:.0f} d"


def latency(ms: float | None) -> str:
    """A latency given in milliseconds."""
    value = ms or 0.0
    if value < 1:
        return f"{value:.2f} ms"
    return duration(value / 1000)


def ago(ts: float | None, now: float | None = None) -> str:
    """How long ago: `just now`, `4 min ago`, `2 h ago`."""
    if not ts:
        return ""
    delta = (now if now is not None else time.time()) - ts
    if delta < 10:
        return "just now"
    if delta < 60:
        return f"{delta:.0f} s ago"
    if delta < 3600:
        return f"{delta // 60:.0f} min ago"
    if delta < 86400:
        return f"{delta // 3600:.0f} h ago"
    return f"{delta // 86400:.0f} d ago"


def iso(ts: float | None) -> str:
    """Machine-readable UTC time for `<time datetime=...>`."""
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def clock(ts: float | None) -> str:
    """Human UTC time; the browser replaces it with local time."""
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def offset(ts: float | None, start: float | None) -> str:
    """Time since the session was created: `+0.012 s`, `+3 min`."""
    if not ts or not start:
        return ""
    delta = max(0.0, ts - start)
    if delta < 60:
        return f"+{delta:.3f} s" if delta < 10 else f"+{delta:.1f} s"
    return "+" + duration(delta)


def parse_json(value: Any) -> Any:
    """JSON text parsed, anything else as is (tool arguments arrive as text)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def pretty(value: Any) -> str:
    """A value for a `<pre>`: text as is, data as indented JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Field:
    """One top-level field of a JSON object, ready to show."""

    key: str
    text: str
    block: bool  # multi-line or structured: shown in a <pre>


def fields(value: Any) -> list[Field] | None:
    """The fields of a JSON object (or of JSON text holding one), else None.

    Strings are shown raw, so file contents read as text rather than as a
    JSON string full of `\\n` escapes.
    """
    data = parse_json(value)
    if not isinstance(data, dict):
        return None
    out = []
    for key, item in data.items():
        if isinstance(item, str):
            out.append(Field(str(key), item, "\n" in item or len(item) > 80))
        elif isinstance(item, dict | list) and item:
            out.append(Field(str(key), pretty(item), True))
        else:
            out.append(Field(str(key), json.dumps(item, ensure_ascii=False), False))
    return out


FILTERS = {
    "money": money,
    "count": count,
    "duration": duration,
    "latency": latency,
    "ago": ago,
    "iso": iso,
    "clock": clock,
    "offset": offset,
    "parse_json": parse_json,
    "pretty": pretty,
    "fields": fields,
}
