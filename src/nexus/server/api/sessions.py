"""Sessions: create, list (filters, pagination), get, events, and live streams."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from nexus.errors import ConfigError
from nexus.runtime.labels import KEY_PATTERN, MAX_LABELS, MAX_VALUE, parse_filter
from nexus.runtime.runtime import Runtime
from nexus.server import sse
from nexus.server.api.models import (
    AUTH,
    EventsPage,
    Session,
    SessionList,
    SessionTotals,
    problems,
)
from nexus.server.broadcast import single
from nexus.server.deflate import accepts_deflate
from nexus.server.problems import Problem
from nexus.server.recordings import resolve_replay, store_upload
from nexus.server.sse import EventStream
from nexus.server.state import ServerState, get_state, require_auth
from nexus.storage.base import SessionQuery, SessionSort
from nexus.types import SessionStatus

# Every integer from outside is bounded before it reaches SQL: SQLite's INTEGER is
# 64-bit (2^70 raised OverflowError, a 500); 2^53 is also the largest a browser's
# JavaScript holds exactly.
MAX_INT = 2**53
MAX_SEARCH = 200  # a goal search is a phrase, not a document

After = Query(ge=0, le=MAX_INT, description="first connect: start after")

router = APIRouter(prefix="/api/v1", tags=["sessions"], dependencies=[Depends(require_auth)])
State = Annotated[ServerState, Depends(get_state)]
SessionId = Annotated[str, Path(max_length=64)]
STREAM = {
    200: {
        "description": "Server-Sent Events (`event: journal`, `event: end`, `event: resync`)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **problems(*AUTH, 400, 404, 422),
}


class Budget(BaseModel):
    """Per-session limits laid over the agent's."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(default=None, ge=1, le=100_000)
    max_tokens: int | None = Field(default=None, ge=1)
    max_wall_s: float | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, ge=0)


class NewSession(BaseModel):
    """The body of `POST /api/v1/sessions`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "goal": "Summarise the notes in my workspace",
                    "priority": 3,
                    "labels": {"team": "ops"},
                    "budget": {"max_steps": 10, "max_cost_usd": 0.5},
                }
            ]
        },
    )

    goal: str = Field(min_length=1, max_length=20_000)
    agent: str | None = Field(default=None, max_length=64)
    priority: int = Field(default=0, ge=0, le=1000, description="0 is the highest")
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description=f"at most {MAX_LABELS}; keys {KEY_PATTERN}, values up to {MAX_VALUE} chars",
    )
    budget: Budget | None = None
    replay: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="a session id of this node, or a file under NEXUS_HOME/recordings/ "
        "named relative to that folder",
    )
    recording: dict[str, Any] | None = Field(
        default=None,
        description="an uploaded recording: the JSON document `nexus export` writes "
        "(instead of `replay`)",
    )
    replay_pace_s: float = Field(default=0.0, ge=0, le=60, description="wait per replayed answer")
    model: str | None = Field(default=None, max_length=200)


async def start_session(state: ServerState, body: NewSession) -> str:
    """Journal a new session from a validated request and hand it to the workers
    (the API and the dashboard's form both come here). `ConfigError` if refused."""
    session_id = create(state.runtime, body)
    await state.submit(session_id, body.priority)
    return session_id


def create(runtime: Runtime, body: NewSession) -> str:
    """Journal a new `queued` session; a replay source must pass the API's rules
    (`nexus.server.recordings`). `ConfigError` if refused, with nothing written."""
    budget = body.budget.model_dump(exclude_none=True) if body.budget else None
    replay, uploaded = None, False
    if body.replay is not None and body.recording is not None:
        raise ConfigError("give either replay or recording, not both")
    if body.replay is not None:
        replay = resolve_replay(runtime, body.replay)
    elif body.recording is not None:
        replay, uploaded = store_upload(runtime, body.recording)
    try:
        return runtime.create_session(
            body.goal,
            agent=body.agent,
            priority=body.priority,
            labels=body.labels,
            replay=replay,
            replay_pace_s=body.replay_pace_s,
            model=body.model,
            limits=budget or None,
        )
    except ConfigError:
        if uploaded and replay is not None:  # refused: leave nothing behind
            FilePath(replay).unlink(missing_ok=True)
        raise


@router.post(
    "/sessions",
    status_code=201,
    response_model=Session,
    responses=problems(*AUTH, 400, 403, 413, 422),
)
async def create_session(body: NewSession, state: State, response: Response) -> dict[str, Any]:
    """Create a session and hand it to the workers; returns its row (status `queued`)."""
    session_id = await start_session(state, body)
    response.headers["Location"] = f"/api/v1/sessions/{session_id}"
    return state.runtime.session(session_id).to_dict()


def session_filters(
    status: Annotated[list[SessionStatus] | None, Query()] = None,
    agent: Annotated[str | None, Query(max_length=64)] = None,
    label: Annotated[
        str | None, Query(max_length=64 + 1 + MAX_VALUE, description="KEY=VALUE")
    ] = None,
    q: Annotated[
        str | None,
        Query(max_length=MAX_SEARCH, description="goals containing this text (ASCII in any case)"),
    ] = None,
    created_after: Annotated[
        float | None, Query(ge=0, le=MAX_INT, description="created at or after (Unix seconds)")
    ] = None,
    created_before: Annotated[
        float | None, Query(ge=0, le=MAX_INT, description="created before (Unix seconds)")
    ] = None,
) -> SessionQuery:
    """The list's filters, shared by the list and its totals, bounded before SQL."""
    if created_after is not None and created_before is not None and created_after > created_before:
        raise ConfigError("created_after must not be later than created_before")
    return SessionQuery(
        status=tuple(s.value for s in status or ()),
        agent=agent,
        label=parse_filter(label) if label else None,  # ConfigError: 422 naming the rule
        q=q or None,
        created_after=created_after,
        created_before=created_before,
    )


Filters = Annotated[SessionQuery, Depends(session_filters)]


@router.get("/sessions", response_model=SessionList, responses=problems(*AUTH, 422))
async def list_sessions(
    state: State,
    filters: Filters,
    sort: Annotated[
        SessionSort,
        Query(
            description="a key, descending with `-`: tokens are in + out, duration "
            "is created to last change; ties by id"
        ),
    ] = "-created",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> dict[str, Any]:
    """Sessions, newest first unless `sort` says otherwise, with `next_offset` when
    there may be more."""
    query = replace(filters, sort=sort, limit=limit + 1, offset=offset)
    rows = state.runtime.sessions(query)
    more = len(rows) > limit
    return {
        "items": [r.to_dict() for r in rows[:limit]],
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if more else None,
    }


@router.get("/sessions/totals", response_model=SessionTotals, responses=problems(*AUTH, 422))
async def session_totals(state: State, filters: Filters) -> dict[str, Any]:
    """Count, failures, tokens and cost of every session the filters select (the
    same filters as the list): what a dashboard shows above it."""
    totals = state.runtime.store.session_totals(filters)
    rate = totals.failed / totals.finished if totals.finished else None
    return {**totals.to_dict(), "failure_rate": rate}


@router.get(
    "/sessions/resolve/{prefix}", response_model=Session, responses=problems(*AUTH, 404, 422)
)
async def resolve_session(prefix: SessionId, state: State) -> dict[str, Any]:
    """The session whose id is `prefix` or starts with it (docker's habit): 404 if
    none, 422 naming the candidates if several."""
    return state.runtime.session(state.runtime.resolve(prefix)).to_dict()


@router.get("/sessions/{session_id}", response_model=Session, responses=problems(*AUTH, 404, 422))
async def get_session(session_id: SessionId, state: State) -> dict[str, Any]:
    """One session."""
    return state.runtime.session(session_id).to_dict()


@router.get(
    "/sessions/{session_id}/events",
    response_model=EventsPage,
    responses=problems(*AUTH, 404, 422),
)
async def session_events(
    session_id: SessionId,
    state: State,
    after_seq: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> Response:
    """A session's journal events with `seq > after_seq`, in order:
    `{"items": [events], "next_after_seq": N}`."""
    state.runtime.session(session_id)
    rows = state.runtime.store.events(session_id, after_seq, limit)
    # Spliced from the stored JSON (the SSE streams' encoding, cached), not parsed
    # into dicts only to be serialised again.
    items = ",".join(state.broadcaster.encode(r) for r in rows)
    next_after = rows[-1].seq if rows else after_seq
    return Response(
        f'{{"items":[{items}],"next_after_seq":{next_after}}}', media_type="application/json"
    )


def _last_event_id(value: str | None) -> int:
    if value is None or value == "":
        return 0
    try:
        parsed = int(value)
    except ValueError:
        raise Problem(
            400, "Last-Event-ID must be a non-negative integer", slug="invalid-last-event-id"
        ) from None
    if not 0 <= parsed <= MAX_INT:
        raise Problem(
            400,
            f"Last-Event-ID must be an integer from 0 to {MAX_INT}",
            slug="invalid-last-event-id",
        )
    return parsed


@router.get(
    "/sessions/{session_id}/stream", response_class=EventStream, status_code=200, responses=STREAM
)
async def session_stream(
    session_id: SessionId,
    state: State,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, After] = None,
    accept_encoding: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> EventStream:
    """Server-Sent Events of one session's journal. Event ids are the journal seq:
    reconnect with `Last-Event-ID` to resume. Ends after the session ends.

    `?after=N` sets where a first connection starts (a browser's EventSource
    cannot send `Last-Event-ID` before it has seen an event); the header wins."""
    after = _last_event_id(last_event_id) if last_event_id else (after or 0)
    broadcaster = state.broadcaster
    # From the broadcaster's memory if it holds this session's frames (many clients
    # of one live session: one read in all), else from the journal.
    caught = broadcaster.catch_up(session_id, after)
    if caught is None:
        session = state.runtime.session(session_id)
        caught = broadcaster.remember(session, after, state.runtime.store.events(session_id, after))
    sub = broadcaster.subscribe(
        session_id, caught.last_seq, deflated=accepts_deflate(accept_encoding)
    )
    sub.begin(caught.pieces)
    sub.ended = caught.ended  # already over: the stream sends its backlog and ends

    def final_frames() -> bytes | None:
        # Quiet for a heartbeat: if the session has ended (in another process, say),
        # what is left of its journal; None while it runs.
        row = state.runtime.store.session(session_id)
        if row is not None and not SessionStatus(row.status).finished:
            return None
        rest = state.runtime.store.events(session_id, sub.last_id)
        if rest:
            sub.last_id = rest[-1].seq
        return broadcaster.backlog(rest, by_seq=True)

    return EventStream(sub, sse.chunks(broadcaster, sub, final_frames))


@router.get("/events/stream", response_class=EventStream, status_code=200, responses=STREAM)
async def all_events_stream(
    state: State,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, After] = None,
    accept_encoding: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> EventStream:
    """Server-Sent Events of every session. Event ids are the journal's global row
    id; reconnect with `Last-Event-ID` (or first connect with `?after=N`) to resume.
    Without either, starts from now."""
    if last_event_id:
        after = _last_event_id(last_event_id)
    elif after is None:
        # From the journal's newest event (the broadcaster's read position may
        # lag it by a coalescing interval).
        after = state.runtime.store.latest_event_id()
    sub = state.broadcaster.subscribe(None, after, deflated=accepts_deflate(accept_encoding))
    limit = state.broadcaster.buffer
    backlog = state.runtime.store.events_after(after, limit)
    if backlog:
        sub.last_id = backlog[-1].id
    # A buffer's worth behind or more: send that much, then `resync` so the client
    # comes back for the next part (the reader is already past it).
    sub.overflowed = len(backlog) == limit
    sub.begin([single(state.broadcaster.backlog(backlog, by_seq=False))])
    return EventStream(sub, sse.chunks(state.broadcaster, sub, lambda: None))
