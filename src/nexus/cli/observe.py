"""`nexus costs` and the per-tool statistics of `nexus traces tools`: the journal's
rollup (`nexus.observe.rollup`) as tables, locally or from a server."""

from __future__ import annotations

import re
import sys
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from nexus.cli.app import (
    EXIT_USAGE,
    JsonOpt,
    ServerOpt,
    _console,
    _die,
    _print_json,
    _read,
    _source,
    app,
    traces_app,
)

DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

WhenOpt = Annotated[
    str | None,
    typer.Option(
        help="A time: a duration ago (30m, 24h, 7d), a date (2026-12-01) or epoch seconds."
    ),
]


def parse_when(given: str | None, *, now: float | None = None) -> float | None:
    """Epoch seconds of a `--since`/`--until`: `24h` (ago), `2026-12-01[T10:00]` (UTC
    unless it names a zone), or seconds; a clear error otherwise."""
    if given is None:
        return None
    text = given.strip()
    if m := DURATION.match(text):
        return (now or time.time()) - float(m[1]) * UNITS[m[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        _die(
            f"cannot read the time {given!r}: use 24h, 7d, 2026-12-01 or epoch seconds", EXIT_USAGE
        )
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _usd(value: float) -> str:
    return f"${value:,.6f}" if value < 1 else f"${value:,.2f}"


def _key(by: str, line: dict[str, Any]) -> str:
    key = line.get("key")
    if by == "day" and isinstance(key, int):
        return datetime.fromtimestamp(key, UTC).strftime("%Y-%m-%d")
    if by == "hour" and isinstance(key, int):
        return datetime.fromtimestamp(key, UTC).strftime("%Y-%m-%d %H:00Z")
    return str(key) if key not in (None, "") else "(none)"


@app.command()
def costs(
    by: Annotated[
        str, typer.Option(help="Group by agent, model, provider, day, hour or session.")
    ] = "agent",
    since: WhenOpt = None,
    until: WhenOpt = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's spend.")] = None,
    limit: Annotated[int, typer.Option(help="Sessions shown with --by session.")] = 20,
    as_json: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """LLM spend from the journal: requests, tokens and USD by agent, model, provider,
    day or hour (UTC), or the most expensive sessions. Estimated parts (tokens counted
    because the provider sent no usage, answers lost in a crash) are shown apart."""
    from rich.table import Table

    if by not in ("agent", "model", "provider", "day", "hour", "session"):
        _die(f"--by takes agent, model, provider, day, hour or session (got {by!r})", EXIT_USAGE)
    query: dict[str, Any] = {"by": by, "since": parse_when(since), "until": parse_when(until)}
    if agent is not None:
        query["agent"] = agent
    if by == "session":
        query["limit"] = limit
    src = _source(server)
    report = _read(lambda: src.costs(**query))
    if as_json:
        _print_json(report)
        return
    console = _console()
    if by == "session":
        table = Table("session", "agent", "status", "steps", "tokens", "cost", box=None)
        for s in report["items"]:
            table.add_row(
                s["id"], s["agent"], s["status"], str(s["steps"]),
                f"{s['tokens_in'] + s['tokens_out']:,}", _usd(s["cost_usd"]),
            )  # fmt: skip
        console.print(table)
        return
    table = Table(by, "requests", "failed", "lost", "tokens in", "tokens out", "cost", "estimated",
                  box=None, show_footer=True)  # fmt: skip
    for line in report["items"]:
        table.add_row(*_cells(_key(by, line), line))
    total = report["total"]
    table.add_section()
    table.add_row(*_cells("total", total), style="bold")
    console.print(table)


def _cells(key: str, line: dict[str, Any]) -> list[str]:
    return [
        key,
        f"{line['requests']:,}",
        f"{line['failed']:,}",
        f"{line['lost']:,}",
        f"{line['tokens_in']:,}",
        f"{line['tokens_out']:,}",
        _usd(line["cost_usd"]),
        _usd(line["estimated_usd"]) if line["estimated_nusd"] else "-",
    ]


@traces_app.command("tools")
def tools(
    since: WhenOpt = "24h",
    until: WhenOpt = None,
    tool: Annotated[str | None, typer.Option(help="Only this tool.")] = None,
    as_json: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Per-tool statistics over a time range (default: the last 24 hours, whole UTC
    hours): calls, success rate, p50/p95/p99 latency, retries, and the failure reasons
    most frequent first."""
    from rich.table import Table

    query: dict[str, Any] = {"since": parse_when(since), "until": parse_when(until)}
    if tool is not None:
        query["tool"] = tool
    src = _source(server)
    report = _read(lambda: src.tool_stats(**query))
    if as_json:
        _print_json(report)
        return
    console = _console()
    if not report["items"]:
        console.print("no tool calls in that range")
        return
    table = Table("tool", "calls", "success", "p50", "p95", "p99", "retries", box=None)
    for s in report["items"]:
        table.add_row(
            s["tool"], f"{s['calls']:,}", f"{s['success_rate']:.1%}", _ms(s["p50_ms"]),
            _ms(s["p95_ms"]), _ms(s["p99_ms"]), str(s["retries"]),
        )  # fmt: skip
    console.print(table)
    for s in report["items"]:
        for f in s["failures"][:5]:
            console.print(
                f"  {s['tool']}: {f['count']}x {f['error_type']}: {f['reason']}", markup=False
            )
    sys.stdout.flush()


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


@app.command()
def alerts(
    since: WhenOpt = None,
    kind: Annotated[
        str | None, typer.Option(help="budget.alert, budget.exceeded or loop.detected.")
    ] = None,
    session: Annotated[str | None, typer.Option(help="Only this session's.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    as_json: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Alerts from the journal, newest first: budgets crossing their alert threshold,
    calls a budget refused, loops detected."""
    query: dict[str, Any] = {"since": parse_when(since), "limit": limit}
    if kind is not None:
        query["kind"] = kind
    if session is not None:
        query["session_id"] = session
    src = _source(server)
    items = _read(lambda: src.alerts(**query))
    if as_json:
        _print_json(items)
        return
    console = _console()
    if not items:
        console.print("no alerts")
        return
    for a in items:
        when = datetime.fromtimestamp(a["ts"], UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        line = f"{when}  {a['kind']:<16} {a['session_id']}  {a['agent']}  {_describe(a)}"
        console.print(line, markup=False)


def _describe(alert: dict[str, Any]) -> str:
    """One line of what an alert says."""
    p = alert["payload"]
    if alert["kind"] == "budget.alert":
        return f"{p['scope']} at {p['fraction']:.0%} of ${p['limit_usd']:g}"
    if alert["kind"] == "budget.exceeded":
        return (
            f"{p['scope']}: a call of up to ${p['needed_usd']:.6f} refused "
            f"(${p['used_usd']:.6f} of ${p['limit_usd']:g} used); {p['action']}"
        )
    detail = p.get("detector") or p.get("reason") or ""
    return str(detail)
