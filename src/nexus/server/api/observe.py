"""Costs, per-tool statistics, time series and Prometheus `/metrics`: views of the
journal through its rollup (`nexus.observe.rollup`), never a scan of the events."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from nexus.observe.metrics import CONTENT_TYPE, exposition
from nexus.server.api.models import AUTH, problems
from nexus.server.problems import Problem
from nexus.server.state import ServerState, get_state, require_auth, server_state
from nexus.storage.base import SessionQuery

router = APIRouter(prefix="/api/v1", tags=["observability"], dependencies=[Depends(require_auth)])
open_router = APIRouter(tags=["observability"])
State = Annotated[ServerState, Depends(get_state)]
MAX_TS = 2**40  # seconds: year 36812; bounds what reaches SQL
Since = Annotated[float | None, Query(ge=0, le=MAX_TS, description="epoch seconds, from")]
Until = Annotated[float | None, Query(ge=0, le=MAX_TS, description="epoch seconds, before")]
Name = Annotated[str | None, Query(max_length=200)]


class CostLine(BaseModel):
    """One group's spend: requests (answered, failed, lost), tokens and USD, and the
    part of that USD which was estimated."""

    key: str | int | None = Field(
        default=None,
        description="the group: an agent, provider/model, provider, or the "
        "UTC day's or hour's start (epoch seconds); none on the total",
    )
    provider: str | None = None
    model: str | None = None
    requests: int
    failed: int
    lost: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    cost_nusd: int = Field(description="cost_usd in integer nano-dollars (exact)")
    estimated_usd: float
    estimated_nusd: int


class CostReport(BaseModel):
    """Spend grouped by one key over a time range (hours, UTC)."""

    by: str
    since: float | None
    until: float | None
    items: list[CostLine]
    total: CostLine


class SessionCost(BaseModel):
    """One session's spend (`by=session`: from the session index)."""

    id: str
    agent: str
    status: str
    created_at: float
    steps: int
    tokens_in: int
    tokens_out: int
    cost_usd: float


class SessionCosts(BaseModel):
    """The most expensive sessions first."""

    by: Literal["session"]
    items: list[SessionCost]


class Failure(BaseModel):
    """One failure reason of a tool and how often it happened."""

    error_type: str
    reason: str
    count: int


class ToolStats(BaseModel):
    """One tool's calls over the range; latencies in ms, interpolated in buckets."""

    tool: str
    calls: int
    ok: int
    errors: int
    success_rate: float | None
    retries: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    failures: list[Failure]


class ToolStatsList(BaseModel):
    """Per-tool statistics, the busiest tool first."""

    since: float | None
    until: float | None
    items: list[ToolStats]


class Point(BaseModel):
    """One time bucket (and group) of the series."""

    ts: int
    key: str
    requests: int
    llm_failures: int
    tokens: int
    cost_usd: float
    sessions: int
    failed: int
    steps: int


class Series(BaseModel):
    """LLM and session figures per hour or day, for charts."""

    window: str
    by: str | None
    items: list[Point]


class Alert(BaseModel):
    """One alert: a budget's threshold crossed, a call refused by a budget, a loop."""

    id: int = Field(description="the journal event's row id")
    ts: float
    session_id: str
    agent: str
    kind: str
    payload: dict[str, Any]
    delivered_at: float | None = Field(description="when the webhook took it, if it did")


class Alerts(BaseModel):
    """Alerts, newest first."""

    items: list[Alert]


async def _caught_up(state: ServerState) -> Any:
    """The server's rollup, with what was committed up to now folded in."""
    rollup = state.rollup
    await asyncio.to_thread(rollup.catch_up)
    return rollup


@router.get(
    "/costs",
    response_model=CostReport | SessionCosts,
    responses=problems(*AUTH, 422),
)
async def costs(
    state: State,
    by: Literal["agent", "model", "provider", "day", "hour", "session"] = "agent",
    since: Since = None,
    until: Until = None,
    agent: Name = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """Spend by agent, model, provider, day or hour over `[since, until)` (every hour
    that starts in it), or the most expensive sessions (`by=session`)."""
    if by == "session":
        rows = await asyncio.to_thread(
            state.runtime.sessions,
            SessionQuery(
                agent=agent, created_after=since, created_before=until, sort="-cost", limit=limit
            ),
        )
        keys = SessionCost.model_fields
        return {"by": "session", "items": [{k: getattr(r, k) for k in keys} for r in rows]}
    rollup = await _caught_up(state)
    report = await asyncio.to_thread(rollup.costs, by, since=since, until=until, agent=agent)
    data: dict[str, Any] = report.to_dict()
    return data


@router.get("/costs/series", response_model=Series, responses=problems(*AUTH, 422))
async def series(
    state: State,
    window: Literal["hour", "day"] = "hour",
    by: Literal["agent", "model", "provider"] | None = None,
    since: Since = None,
    until: Until = None,
) -> dict[str, Any]:
    """Requests, failures, tokens, cost, sessions ended and failed, and their steps,
    per hour or day (and per agent, model or provider), in time order."""
    rollup = await _caught_up(state)
    items = await asyncio.to_thread(rollup.series, window=window, by=by, since=since, until=until)
    return {"window": window, "by": by, "items": items}


@router.get("/tools/stats", response_model=ToolStatsList, responses=problems(*AUTH, 422))
async def tool_stats(
    state: State, since: Since = None, until: Until = None, tool: Name = None
) -> dict[str, Any]:
    """Per tool over `[since, until)`: calls, success rate, p50/p95/p99 latency,
    retries, and failure reasons ranked."""
    rollup = await _caught_up(state)
    items = await asyncio.to_thread(rollup.tool_stats, since=since, until=until, tool=tool)
    return {"since": since, "until": until, "items": items}


@router.get("/alerts", response_model=Alerts, responses=problems(*AUTH, 422))
async def alerts(
    state: State,
    since: Since = None,
    kind: Name = None,
    session_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """Budget alerts and refusals and loop detections, newest first."""
    rollup = await _caught_up(state)
    items = await asyncio.to_thread(
        rollup.alerts, since=since, kind=kind, session_id=session_id, limit=limit
    )
    return {"items": items}


@open_router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **problems(*AUTH),
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of the whole journal (every worker's sessions). Needs the
    token (a bearer `authorization` in the scrape config) unless
    `NEXUS_METRICS_PUBLIC=true`."""
    state = server_state(request)
    if not state.runtime.settings.metrics_public:
        state.auth.require(request)
    if state.metrics is None:
        raise Problem(503, "metrics are not available")
    body = await asyncio.to_thread(exposition, state.metrics)
    return Response(body, media_type=CONTENT_TYPE)
