"""The built-in panels and actions of the session page: what they compute."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nexus.errors import ConfigError
from nexus.format import money
from nexus.runtime.runtime import session_limits
from nexus.server.dashboard import format as fmt
from nexus.types import SessionStatus

if TYPE_CHECKING:
    from nexus.server.dashboard.registry import View
    from nexus.storage.base import SessionRow


@dataclass(frozen=True, slots=True)
class Gauge:
    """One used-versus-limit line of the budget panel."""

    label: str
    used: float
    limit: float | None
    used_text: str
    limit_text: str

    @property
    def ratio(self) -> float | None:
        """Share of the limit used (None when unlimited)."""
        if not self.limit:
            return None
        return min(1.0, self.used / self.limit)


def created_payload(view: View) -> dict[str, Any]:
    """The `session.created` payload of the view's session (goal, agent, limits...)."""
    if view.session is None:
        return {}
    first = view.state.runtime.store.events(view.session.id, 0, 1)
    if not first or first[0].kind != "session.created":
        return {}
    payload: dict[str, Any] = json.loads(first[0].payload)
    return payload


def elapsed(session: SessionRow, now: float | None = None) -> float:
    """Wall time of a session so far (to its last event once it has ended)."""
    end = session.updated_at
    if not SessionStatus(session.status).finished:
        end = now if now is not None else time.time()
    return max(0.0, end - session.created_at)


def budget(view: View) -> dict[str, Any]:
    """Steps, tokens, cost and wall time against the session's effective limits."""
    s = view.session
    if s is None:
        return {"gauges": []}
    override = created_payload(view).get("limits")
    try:
        limits = session_limits(view.state.runtime.agents.get(s.agent).limits, override)
        lim = limits.model_dump()
    except ConfigError:  # the agent was removed since: show the session's own budget
        lim = dict(override or {})
    tokens = s.tokens_in + s.tokens_out
    wall = elapsed(s)
    gauges = [
        Gauge("Steps", s.steps, lim.get("max_steps"), fmt.count(s.steps), _lim(lim, "max_steps")),
        Gauge("Tokens", tokens, lim.get("max_tokens"), fmt.count(tokens), _lim(lim, "max_tokens")),
        Gauge(
            "Cost",
            s.cost_usd,
            lim.get("max_cost_usd"),
            money(s.cost_usd),
            money(lim["max_cost_usd"]) if lim.get("max_cost_usd") is not None else "no limit",
        ),
        Gauge(
            "Wall time",
            wall,
            lim.get("max_wall_s"),
            fmt.duration(wall),
            fmt.duration(lim["max_wall_s"]) if lim.get("max_wall_s") is not None else "no limit",
        ),
    ]
    return {"gauges": gauges}


def _lim(limits: dict[str, Any], key: str) -> str:
    value = limits.get(key)
    return "no limit" if value is None else fmt.count(value)


def details(view: View) -> dict[str, Any]:
    """Priority, labels, model and replay source, the worker of its latest run and
    that run's epoch, and the journal's head hash."""
    s = view.session
    created = created_payload(view)
    store = view.state.runtime.store
    head = store.head(s.id)[1] if s is not None else ""
    epoch, worker = store.session_owner(s.id) if s is not None else (0, None)
    return {
        "created": created,
        "journal_head": head,
        "run": {"epoch": epoch, "worker": worker},
    }


def replayable(view: View) -> bool:
    """A session can be replayed once it has ended (its LLM answers are all recorded)."""
    return view.session is not None and SessionStatus(view.session.status).finished


def killable(view: View) -> bool:
    """Kill applies to a session that has not ended."""
    return view.session is not None and not SessionStatus(view.session.status).finished


def pausable(view: View) -> bool:
    """Pause applies to a session that runs or waits for a worker."""
    return view.session is not None and view.session.status in (
        SessionStatus.RUNNING.value,
        SessionStatus.QUEUED.value,
    )


def resumable(view: View) -> bool:
    """Resume applies to a paused session."""
    return view.session is not None and view.session.status == SessionStatus.PAUSED.value
