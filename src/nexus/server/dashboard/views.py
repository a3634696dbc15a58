"""The session page's views for people other than the engineer reading the
timeline: what they compute (the panels are registered in `registry.PANELS`).

* Outcome (product): the session's result, cost, steps and tokens, and its agent's
  cost, success rate and steps per day over the last 7 days, from the rollup.
* Conversation (domain experts): the session as a readable transcript, folded
  from its journal (`nexus.observe.transcript`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from nexus.format import money
from nexus.observe.transcript import transcript
from nexus.server.dashboard import charts
from nexus.server.dashboard.format import count
from nexus.types import SessionStatus

if TYPE_CHECKING:
    from nexus.server.dashboard.registry import View

HISTORY_DAYS = 7
MAX_ENTRIES = 300
"""The transcript shows a session's last this many entries (the timeline has all)."""

OUTCOMES = {
    SessionStatus.COMPLETED: ("Succeeded", "completed"),
    SessionStatus.FAILED: ("Failed", "failed"),
    SessionStatus.KILLED: ("Killed", "killed"),
    SessionStatus.PAUSED: ("Paused", "paused"),
}


def outcome(view: View) -> dict[str, Any]:
    """The session's figures and its agent's last 7 days (per UTC day)."""
    s = view.session
    if s is None:
        return {}
    status = SessionStatus(s.status)
    label, css = OUTCOMES.get(status, ("In progress", "running"))
    return {
        "outcome": {"label": label, "status": css, "finished": status.finished},
        "history": _history(view, s.agent),
    }


def _history(view: View, agent: str) -> dict[str, Any] | None:
    rollup = view.state.rollup
    if rollup is None:
        return None
    # Panels render synchronously; the server's follower thread keeps the rollup
    # current, so this catch-up usually folds nothing (one indexed read).
    rollup.catch_up()
    today = int(time.time() // charts.DAY) * charts.DAY
    since, until = today - (HISTORY_DAYS - 1) * charts.DAY, today + charts.DAY
    points = [
        p
        for p in rollup.series(window="day", by="agent", since=since, until=until)
        if p["key"] == agent
    ]
    starts = charts.buckets(since, until, "day")
    colours = {agent: "0"}

    def per_day(field: str) -> dict[str, dict[int, float]]:
        return {agent: {p["ts"]: p[field] for p in points}}

    ok = {agent: {p["ts"]: p["sessions"] - p["failed"] for p in points}}
    common: dict[str, Any] = {
        "starts": starts, "window": "day", "colours": colours, "size": charts.SMALL,
    }  # fmt: skip
    sessions = sum(p["sessions"] for p in points)
    failed = sum(p["failed"] for p in points)
    return {
        "agent": agent,
        "sessions": sessions,
        "success_rate": (sessions - failed) / sessions if sessions else None,
        "cost": sum(p["cost_usd"] for p in points),
        "steps": sum(p["steps"] for p in points),
        "charts": [
            charts.stacked_bars(
                id="agent-cost",
                title="Cost per day",
                metric="cost",
                values=per_day("cost_usd"),
                fmt=money,
                **common,
            ),
            charts.rate_lines(
                id="agent-success",
                title="Success rate per day",
                metric="success_rate",
                hits=ok,
                of=per_day("sessions"),
                noun=("succeeded", "sessions"),
                **common,
            ),
            charts.stacked_bars(
                id="agent-steps",
                title="Steps per day",
                metric="steps",
                values=per_day("steps"),
                fmt=count,
                integer=True,
                **common,
            ),
        ],
        "percent": charts.percent,
    }


def conversation(view: View) -> dict[str, Any]:
    """The session's transcript (its last `MAX_ENTRIES` entries)."""
    s = view.session
    if s is None:
        return {"entries": [], "skipped": 0, "ended": False}
    state = transcript(view.state.runtime.journal.events(s.id))
    skipped = max(0, len(state.entries) - MAX_ENTRIES)
    return {"entries": state.entries[skipped:], "skipped": skipped, "ended": state.ended}
