"""A session's trace: its span tree rebuilt from the journal (`nexus.observe.spans`),
the same document as `nexus traces show --json`."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from nexus.observe.spans import build_trace
from nexus.server.api.models import AUTH, COST, problems
from nexus.server.api.sessions import SessionId
from nexus.server.state import ServerState, get_state, require_auth

router = APIRouter(prefix="/api/v1", tags=["traces"], dependencies=[Depends(require_auth)])
State = Annotated[ServerState, Depends(get_state)]


class TraceEvent(BaseModel):
    """A control-flow event of the session (started, resumed, paused, killed...)."""

    name: str = Field(description="the journal event's kind")
    ts: float
    seq: int = Field(description="the journal event's seq")
    attributes: dict[str, Any]


class TraceSpan(BaseModel):
    """One span: the session (`invoke_agent`), an agent step (`step`), an LLM attempt
    (`chat`) or a tool attempt (`execute_tool`). `start_seq`/`end_seq` name the journal
    events that open and close it; an open span has no end yet."""

    span_id: str = Field(description="16 hex digits, deterministic: (session, kind, step, attempt)")
    parent_id: str | None
    name: str = Field(examples=["chat gpt-4o-mini", "execute_tool read_file"])
    operation: str = Field(description="invoke_agent, step, chat or execute_tool")
    status: str = Field(description="ok, error, or unset while open")
    error: str | None = Field(description="why it failed")
    error_type: str | None
    open: bool
    start: float
    end: float | None
    start_seq: int
    end_seq: int | None
    duration_ms: float | None
    step: int | None
    attempt: int | None
    retry_reason: str | None
    tokens_in: int
    tokens_out: int
    cost_usd: float = Field(description=COST)
    cost_estimated: bool = Field(description="part of the cost was estimated (lost answers)")
    attributes: dict[str, Any] = Field(
        description="as exported over OTLP: the GenAI semantic conventions' gen_ai.* and nexus.*"
    )
    events: list[TraceEvent]
    children: list[TraceSpan]


class Trace(BaseModel):
    """A session's span tree."""

    session_id: str
    trace_id: str = Field(description="32 hex digits, a hash of the session id")
    root: TraceSpan


@router.get(
    "/sessions/{session_id}/trace", response_model=Trace, responses=problems(*AUTH, 404, 422)
)
async def session_trace(session_id: SessionId, state: State) -> dict[str, Any]:
    """The session's span tree with durations, tokens, cost, retries and failure
    reasons, rebuilt from its journal."""
    runtime = state.runtime
    runtime.session(session_id)  # 404 for an unknown session
    events = await asyncio.to_thread(runtime.journal.events, session_id)
    trace: dict[str, Any] = build_trace(events).to_dict()
    return trace
