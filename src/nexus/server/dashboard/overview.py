"""The overview page (`/overview`): cost, tokens, sessions and failure rate over
time, by agent, model or provider, for a time range; the totals; the cost
breakdown and the per-tool statistics. Live: the page's script re-fetches
`/fragments/overview` (same query string) on journal news.

Every figure comes from the journal's rollup (`nexus.observe.rollup`), caught up
first, never from a scan of the events. Buckets are UTC hours or days: the last
24 hours are the 24 hourly buckets ending with the current hour, 7 and 30 days the
daily buckets ending today; a custom range is whole UTC days (hourly up to two).

The query string is read leniently, like the sessions list's: an unknown range or
grouping falls back to the default, a date that does not parse is left out and
named beside the form, so the page renders whatever the address bar holds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, Literal, cast
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nexus.format import money
from nexus.server.dashboard import charts
from nexus.server.dashboard.format import count
from nexus.server.dashboard.web import page_router, render, render_text, require_login, state_of

router = page_router()

RangeName = Literal["24h", "7d", "30d", "custom"]
GroupName = Literal["agent", "model", "provider"]
RANGES: dict[str, str] = {
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "custom": "Custom",
}
GROUPINGS: dict[str, str] = {"agent": "Agent", "model": "Model", "provider": "Provider"}
DEFAULT_RANGE: RangeName = "7d"
MAX_CUSTOM_DAYS = 366
HOURLY_DAYS = 2
"""A custom range of at most this many days is drawn per hour, a longer one per day."""
ALL = "all"
FRAGMENTS = ("figures", "charts", "costs", "tools", "alerts")


@dataclass(frozen=True, slots=True)
class Span:
    """The range and grouping the page shows, as asked and as resolved."""

    range: RangeName
    by: GroupName
    window: charts.Window
    since: int  # the first bucket's start (epoch seconds, UTC)
    until: int  # the end of the last bucket
    label: str
    problems: tuple[str, ...] = ()

    @property
    def first_day(self) -> str:
        """The range's first UTC day, for the date inputs."""
        return _day(self.since)

    @property
    def last_day(self) -> str:
        """The range's last UTC day (inclusive)."""
        return _day(self.until - 1)

    @property
    def starts(self) -> list[int]:
        """Every bucket's start, in order."""
        return charts.buckets(self.since, self.until, self.window)

    def query(self, **change: str) -> str:
        """This view's query string, with `change` applied."""
        params: dict[str, str] = {"range": self.range, "by": self.by}
        if self.range == "custom":
            params.update(since=self.first_day, until=self.last_day)
        params.update(change)
        if params.get("range") != "custom":
            params.pop("since", None)
            params.pop("until", None)
        return urlencode(params)


def span_of(params: QueryParams, now: float) -> Span:
    """The span a query string asks for, never failing (see the module docstring)."""
    problems: list[str] = []
    asked = params.get("range") or DEFAULT_RANGE
    name = cast("RangeName", asked if asked in RANGES else DEFAULT_RANGE)
    if asked not in RANGES:
        problems.append(f"range {asked[:20]!r} is not one of {', '.join(RANGES)}")
    grouping = params.get("by") or "agent"
    by = cast("GroupName", grouping if grouping in GROUPINGS else "agent")
    if grouping not in GROUPINGS:
        problems.append(f"grouping {grouping[:20]!r} is not one of {', '.join(GROUPINGS)}")
    hour = int(now // charts.HOUR) * charts.HOUR
    today = int(now // charts.DAY) * charts.DAY
    if name == "custom":
        custom = _custom(params, today, problems)
        if custom is not None:
            return replace(custom, by=by, problems=tuple(problems))
        name = DEFAULT_RANGE
    if name == "24h":
        until = hour + charts.HOUR
        span = Span("24h", by, "hour", until - 24 * charts.HOUR, until, RANGES["24h"])
    else:
        days = 7 if name == "7d" else 30
        until = today + charts.DAY
        span = Span(name, by, "day", until - days * charts.DAY, until, RANGES[name])
    return replace(span, problems=tuple(problems))


def _custom(params: QueryParams, today: int, problems: list[str]) -> Span | None:
    first = _date(params.get("since"), "since", problems)
    if first is None:
        if not params.get("since"):
            problems.append("a custom range needs its first day (since)")
        return None
    last = _date(params.get("until"), "until", problems) if params.get("until") else None
    until = (last if last is not None else today) + charts.DAY
    if until <= first:
        problems.append("the range ends before it starts")
        return None
    days = (until - first) // charts.DAY
    if days > MAX_CUSTOM_DAYS:
        problems.append(f"a range spans at most {MAX_CUSTOM_DAYS} days: showing its last ones")
        first = until - MAX_CUSTOM_DAYS * charts.DAY
        days = MAX_CUSTOM_DAYS
    window: charts.Window = "hour" if days <= HOURLY_DAYS else "day"
    label = f"{_day(first)} to {_day(until - 1)}"
    return Span("custom", "agent", window, first, until, label)


def _date(value: str | None, name: str, problems: list[str]) -> int | None:
    """A UTC day (YYYY-MM-DD) as its start in epoch seconds."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value[:10]) if len(value) == 10 else None
    except ValueError:
        day = None
    if day is None or day.year < 1970:
        problems.append(f"{name} {value[:40]!r} is not a day (YYYY-MM-DD, from 1970)")
        return None
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


# -- the figures -----------------------------------------------------------------------


def read(rollup: Any, span: Span) -> dict[str, Any]:
    """What the page shows, from the rollup caught up first (run in a thread)."""
    rollup.catch_up()
    grouped = rollup.series(window=span.window, by=span.by, since=span.since, until=span.until)
    whole = (
        grouped
        if span.by == "agent"
        else rollup.series(window=span.window, by=None, since=span.since, until=span.until)
    )
    costs = rollup.costs(span.by, since=span.since, until=span.until)
    tools = rollup.tool_stats(since=span.since, until=span.until)
    alerts = [a for a in rollup.alerts(since=span.since, limit=50) if a["ts"] < span.until]
    return {"grouped": grouped, "whole": whole, "costs": costs, "tools": tools, "alerts": alerts}


def _series_key(line: dict[str, Any], by: str) -> str:
    """A cost line's group as the series names it (by model: the model alone)."""
    return str(line["model"] if by == "model" else line["key"] or "")


def context(span: Span, data: dict[str, Any]) -> dict[str, Any]:
    """The page's charts, figures and tables from what `read` returned."""
    grouped, whole, report = data["grouped"], data["whole"], data["costs"]
    total = report.total
    ranked = [_series_key(line, span.by) for line in report.items]
    ranked += sorted(
        {p["key"] for p in grouped} - set(ranked),
        key=lambda k: (-sum(p["sessions"] for p in grouped if p["key"] == k), k),
    )
    colours = charts.palette(ranked)

    def values(points: list[dict[str, Any]], field: str, key: str | None = None) -> Any:
        out: dict[str, dict[int, float]] = {}
        for p in points:
            out.setdefault(key if key is not None else p["key"], {})[p["ts"]] = p[field]
        return out

    starts = span.starts
    subject = f"by {span.by}"
    common: dict[str, Any] = {"starts": starts, "window": span.window}
    unit = "hour" if span.window == "hour" else "day"
    if span.by == "agent":
        session_colours, session_key, session_subject = colours, None, subject
    else:  # sessions belong to agents: a model or provider split would be made up
        session_colours, session_key, session_subject = {ALL: ALL}, ALL, "(all sessions)"
    chart_list = [
        charts.stacked_bars(
            id="chart-cost", title=f"Cost per {unit}", metric="cost",
            values=values(grouped, "cost_usd"), colours=colours, fmt=money,
            subject=subject, **common,
        ),
        charts.stacked_bars(
            id="chart-tokens", title=f"Tokens per {unit}", metric="tokens",
            values=values(grouped, "tokens"), colours=colours, fmt=count, integer=True,
            subject=subject, **common,
        ),
        charts.stacked_bars(
            id="chart-sessions", title=f"Sessions ended per {unit}", metric="sessions",
            values=values(whole, "sessions", session_key), colours=session_colours,
            fmt=count, integer=True, subject=session_subject, **common,
        ),
        charts.rate_lines(
            id="chart-failures", title=f"Failure rate per {unit}", metric="failure_rate",
            hits=values(whole, "failed", session_key), of=values(whole, "sessions", session_key),
            colours=session_colours, noun=("failed or were killed", "sessions"),
            subject=session_subject, **common,
        ),
    ]  # fmt: skip
    sessions = sum(p["sessions"] for p in whole)
    failed = sum(p["failed"] for p in whole)
    figures = {
        "cost": total["cost_usd"],
        "estimated": total["estimated_usd"],
        "tokens": total["tokens_in"] + total["tokens_out"],
        "tokens_in": total["tokens_in"],
        "tokens_out": total["tokens_out"],
        "requests": total["requests"],
        "llm_failed": total["failed"],
        "lost": total["lost"],
        "sessions": sessions,
        "failed": failed,
        "failure_rate": failed / sessions if sessions else None,
    }
    lines = [
        {**line, "series": colours.get(_series_key(line, span.by), charts.OTHER),
         "label": charts.group_label(str(line["key"] or "")),
         "share": line["cost_nusd"] / total["cost_nusd"] if total["cost_nusd"] else None}
        for line in report.items
    ]  # fmt: skip
    return {
        "span": span,
        "ranges": RANGES,
        "groupings": GROUPINGS,
        "charts": chart_list,
        "figures": figures,
        "cost_lines": lines,
        "cost_total": total,
        "tools": data["tools"],
        "alerts": data["alerts"],
        "percent": charts.percent,
    }


async def overview_context(request: Request) -> dict[str, Any]:
    """The page's (and its fragment's) variables for the request's query string."""
    state = state_of(request)
    span = span_of(request.query_params, time.time())
    data = await asyncio.to_thread(read, state.rollup, span)
    return context(span, data)


@router.get("/overview")
async def overview_page(request: Request) -> Response:
    """Cost, tokens, sessions and failure rate over time; totals; cost breakdown; tools."""
    require_login(request)
    return render(request, "overview.html", await overview_context(request))


@router.get("/fragments/overview")
async def overview_fragment(request: Request) -> Response:
    """The live parts of the overview for the same query string."""
    require_login(request)
    ctx = await overview_context(request)
    replace_ = {
        f"overview-{name}": render_text(request, f"overview/{name}.html", ctx) for name in FRAGMENTS
    }
    span: Span = ctx["span"]
    state = {"range": span.range, "by": span.by, "since": span.since, "until": span.until}
    return JSONResponse({"replace": replace_, "append": {}, "state": state})
