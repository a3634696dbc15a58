"""The agent loop: ask the model, run the tools it calls, until it answers.

The loop keeps no state of its own: it rebuilds the conversation from the
journal, so starting a session and resuming one after a crash are the same code.
A completed LLM call or tool call is never executed again; a tool call journaled
as started but not finished is retried with the same idempotency key.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nexus.errors import SessionNotFound, TerminalError
from nexus.runtime.agents import Agent, Limits
from nexus.runtime.journal import Journal, canonical
from nexus.runtime.pipeline import Guard, Pipeline, RunContext
from nexus.runtime.tools import ToolContext
from nexus.types import JSON, ChatRequest, Event, Provider, SessionStatus, Step, ToolCall

log = logging.getLogger("nexus.loop")


def idempotency_key(session_id: str, step: int) -> str:
    """The stable key of step `step` of a session."""
    return hashlib.sha256(f"{session_id}:{step}".encode()).hexdigest()[:32]


@dataclass
class Replayed:
    """A session's state as rebuilt from its journal."""

    created: JSON
    messages: list[JSON]
    status: SessionStatus
    started_at: float | None = None
    steps_started: int = 0
    steps_done: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    pending: list[ToolCall] = field(default_factory=list)
    unfinished: dict[str, int] = field(default_factory=dict)  # call id -> step number
    final: str | None = None


def replay_journal(events: Iterable[Event], system_prompt: str) -> Replayed:
    """Rebuild the conversation, counters and open tool calls from events."""
    it = iter(events)
    first = next(it, None)
    if first is None or first.kind != "session.created":
        raise SessionNotFound("session has no session.created event")
    created = first.payload
    state = Replayed(
        created=created,
        messages=[
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": created["goal"]},
        ],
        status=SessionStatus.QUEUED,
    )
    for e in it:
        k, p = e.kind, e.payload
        if k == "llm.response":
            msg = p["message"]
            state.messages.append(msg)
            state.steps_started += 1
            state.steps_done += 1
            state.tokens_in += e.tokens_in
            state.tokens_out += e.tokens_out
            state.cost_usd += e.cost_usd
            state.pending = [
                ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
                for c in msg.get("tool_calls") or ()
            ]
            if not state.pending:
                state.final = msg.get("content") or ""
        elif k == "tool.call":
            state.steps_started += 1
            state.unfinished[p["call_id"]] = p["step"]
        elif k == "tool.result":
            state.steps_done += 1
            state.unfinished.pop(p["call_id"], None)
            state.pending = [c for c in state.pending if c.id != p["call_id"]]
            state.messages.append(
                {"role": "tool", "tool_call_id": p["call_id"], "content": tool_content(p)}
            )
        elif k in ("session.started", "session.resumed"):
            if state.started_at is None:
                state.started_at = e.ts
            state.status = SessionStatus.RUNNING
        elif k in ("session.completed", "session.failed", "session.killed", "session.paused"):
            state.status = SessionStatus(k.split(".", 1)[1])
    return state


def tool_content(payload: JSON) -> str:
    """What the model sees of a tool result."""
    if "error" in payload:
        return f"error ({payload.get('error_type', 'Error')}): {payload['error']}"
    result = payload.get("result")
    return result if isinstance(result, str) else canonical(result)


async def run_session(
    session_id: str,
    *,
    journal: Journal,
    agent: Agent,
    provider: Provider,
    guards: list[Guard],
    workspace: Path,
    allow_hosts: tuple[str, ...] = (),
    limits: Limits | None = None,
) -> SessionStatus:
    """Run (or resume) a session to its end; returns its final status.

    Terminal errors end the session as `failed` with the reason journaled.
    Cancellation (worker shutdown) propagates and leaves the session `running`
    for durable recovery.
    """
    state = replay_journal(journal.events(session_id), agent.system_prompt)
    if state.status.finished:
        return state.status
    resumed = state.started_at is not None
    await journal.append_async(
        session_id,
        "session.resumed" if resumed else "session.started",
        {"agent": agent.name, "steps_done": state.steps_done} if resumed else {"agent": agent.name},
    )
    toolbox = agent.toolbox()
    workspace.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once per session, tiny

    def tool_context(step: Step) -> ToolContext:
        return ToolContext(
            session_id=session_id,
            step=step.number,
            idempotency_key=step.idempotency_key,
            workspace=workspace,
            retry=bool(step.meta.get("retry")),
            allow_hosts=allow_hosts,
        )

    run = RunContext(
        session_id=session_id,
        agent_name=agent.name,
        journal=journal,
        provider=provider,
        toolbox=toolbox,
        limits=limits or agent.limits,
        tool_context=tool_context,
        steps=state.steps_done,
        tokens_in=state.tokens_in,
        tokens_out=state.tokens_out,
        cost_usd=state.cost_usd,
    )
    if state.started_at is not None:
        run.started_at = state.started_at
    pipeline = Pipeline(guards, run)
    model = state.created.get("model") or agent.model
    next_step = state.steps_started + 1
    try:
        while True:
            if state.pending:
                call = state.pending.pop(0)
                retry_step = state.unfinished.pop(call.id, None)
                number = retry_step if retry_step is not None else next_step
                if retry_step is None:
                    next_step += 1
                step = Step(
                    kind="tool",
                    number=number,
                    session_id=session_id,
                    call=call,
                    idempotency_key=idempotency_key(session_id, number),
                    meta={"retry": retry_step is not None},
                )
                outcome = await pipeline(step)
                content = tool_content(
                    {"result": outcome.result}
                    if outcome.error is None
                    else {"error": outcome.error, "error_type": outcome.error_type}
                )
                state.messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
                continue
            if state.final is not None:
                await journal.append_async(
                    session_id,
                    "session.completed",
                    {"answer": state.final, "steps": run.steps},
                    reason="completed",
                )
                journal.forget(session_id)
                return SessionStatus.COMPLETED
            step = Step(
                kind="llm",
                number=next_step,
                session_id=session_id,
                request=ChatRequest(
                    messages=list(state.messages), tools=toolbox.specs, model=model
                ),
                idempotency_key=idempotency_key(session_id, next_step),
            )
            next_step += 1
            outcome = await pipeline(step)
            resp = outcome.chat_response(step.number)
            state.messages.append(resp.message())
            state.pending = list(resp.tool_calls)
            state.final = None if resp.tool_calls else (resp.content or "")
    except TerminalError as exc:
        return await _fail(journal, session_id, f"{type(exc).__name__}: {exc}", run.steps)
    except Exception as exc:
        log.exception("session %s crashed", session_id)
        return await _fail(
            journal, session_id, f"internal error: {type(exc).__name__}: {exc}", run.steps
        )


async def _fail(journal: Journal, session_id: str, reason: str, steps: int) -> SessionStatus:
    await journal.append_async(
        session_id, "session.failed", {"reason": reason, "steps": steps}, reason=reason
    )
    journal.forget(session_id)
    return SessionStatus.FAILED
