"""Kill, pause and resume over the API: the control channel's commands
(`nexus.runtime.control`), sent by the authenticated principal.

A command is applied by the session's own runner, so each route posts it and then
waits, a bounded time and without blocking the loop, for the status it asks for:
`killed` for a kill, `paused` for a pause with `?wait=true`. The answer is the
command as stored and the session as it then stands.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from nexus.errors import SessionFinished
from nexus.runtime.control import KILL, MAX_NOTE, MAX_REASON, PAUSE
from nexus.runtime.dispatch import resume_session
from nexus.runtime.runtime import Runtime
from nexus.server.api.models import AUTH, ControlResult, problems
from nexus.server.auth import Principal
from nexus.server.state import ServerState, get_state, require_auth
from nexus.storage.base import CommandRow, SessionRow
from nexus.types import SessionStatus

POLL_S = 0.02
MAX_WAIT_S = 60.0

router = APIRouter(prefix="/api/v1", tags=["control"], dependencies=[Depends(require_auth)])
State = Annotated[ServerState, Depends(get_state)]
Who = Annotated[Principal, Depends(require_auth)]
SessionId = Annotated[str, Path(max_length=64)]
WaitS = Annotated[
    float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait for the effect; 0: do not")
]
RESPONSES = problems(*AUTH, 400, 403, 404, 409, 413, 422)


class Reason(BaseModel):
    """The body of a kill or a pause (optional)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "it loops on the same tool"}]}
    )

    reason: str | None = Field(default=None, max_length=MAX_REASON, description="why (journaled)")


class Resume(Reason):
    """The body of a resume (optional)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "checked", "note": "Skip the HTTP fetch."}]},
    )

    note: str | None = Field(
        default=None,
        max_length=MAX_NOTE,
        description="for the agent: journaled, and read before its next LLM call",
    )


async def settle(runtime: Runtime, session_id: str, wanted: str, wait_s: float) -> SessionRow:
    """The session once its status is `wanted` or it has ended, or after `wait_s`.

    Polls the index (one indexed read every 20 ms) with `asyncio.sleep`: the runner
    applying the command may run on this very loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        row = runtime.session(session_id)
        if row.status == wanted or SessionStatus(row.status).finished or loop.time() >= deadline:
            return row
        await asyncio.sleep(POLL_S)


def result(command: CommandRow, row: SessionRow, wanted: str) -> dict[str, Any]:
    """The answer; `SessionFinished` (409) if the session ended otherwise (it
    completed before the command reached it)."""
    if row.status != wanted and SessionStatus(row.status).finished:
        raise SessionFinished(
            f"session {row.id} ended {row.status} before the {command.kind} applied"
        )
    return {"command": command.to_dict(), "session": row.to_dict()}


@router.post("/sessions/{session_id}/kill", response_model=ControlResult, responses=RESPONSES)
async def kill_session(
    session_id: SessionId,
    state: State,
    who: Who,
    body: Annotated[Reason | None, Body()] = None,
    wait_s: WaitS = 5.0,
) -> dict[str, Any]:
    """Hard stop: no further step runs and the step in flight is cancelled. Waits
    up to `wait_s` for `killed` (a queued or paused session is killed at once).
    Idempotent: the kill of a killed session answers its kill."""
    reason = body.reason if body and body.reason else ""
    runtime = state.runtime
    command = await runtime.control.post(session_id, KILL, by=who.sender("api"), reason=reason)
    row = await settle(runtime, session_id, SessionStatus.KILLED.value, wait_s)
    return result(command, row, SessionStatus.KILLED.value)


@router.post("/sessions/{session_id}/pause", response_model=ControlResult, responses=RESPONSES)
async def pause_session(
    session_id: SessionId,
    state: State,
    who: Who,
    body: Annotated[Reason | None, Body()] = None,
    wait: Annotated[bool, Query(description="wait until paused: no step in flight")] = False,
    wait_s: WaitS = 5.0,
) -> dict[str, Any]:
    """Soft stop at the next step boundary; the session keeps everything and frees
    its worker slot until resumed. With `wait=true`, waits up to `wait_s` for
    `paused` (409 if it ended instead)."""
    reason = body.reason if body and body.reason else ""
    runtime = state.runtime
    command = await runtime.control.post(session_id, PAUSE, by=who.sender("api"), reason=reason)
    row = await settle(runtime, session_id, SessionStatus.PAUSED.value, wait_s if wait else 0.0)
    return result(command, row, SessionStatus.PAUSED.value)


@router.post("/sessions/{session_id}/resume", response_model=ControlResult, responses=RESPONSES)
async def resume(
    session_id: SessionId,
    state: State,
    who: Who,
    body: Annotated[Resume | None, Body()] = None,
) -> dict[str, Any]:
    """Continue a paused session from its next step on a worker (422 if it is not
    paused); the note, if any, is read by the agent before its next LLM call."""
    body = body or Resume()
    command = await resume_session(
        state.runtime,
        session_id,
        by=who.sender("api"),
        reason=body.reason or "",
        note=body.note,
        dispatcher=state.dispatcher,
    )
    row = state.runtime.session(session_id)
    return {"command": command.to_dict(), "session": row.to_dict()}
