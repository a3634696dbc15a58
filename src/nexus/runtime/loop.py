"""The agent loop: ask the model, run the tools it calls, until it answers.

The loop keeps no state of its own: the session's state is a fold of its journal
(`nexus.runtime.fold`), so starting a session and resuming one after a crash are
the same code. A finished LLM call or tool call is never executed again; a step
journaled as started but not finished is tried again as its next attempt (same
step number, same idempotency key), and the journal says so.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence

from nexus import events as ev
from nexus.errors import ControlFlow, JournalError, SessionFenced, SessionKilled, TerminalError
from nexus.runtime.fold import Conversation, ConversationState, fold
from nexus.runtime.pipeline import Pipeline
from nexus.types import JSON, ChatRequest, Event, RunContext, SessionHook, SessionStatus, Step

log = logging.getLogger("nexus.loop")

INTERRUPTED = "attempt {n} was interrupted: the worker stopped before it finished"
SUSPENDED = "attempt {n} did not run: the session was paused before it"


def idempotency_key(session_id: str, step: int) -> str:
    """The stable key of step `step` of a session."""
    return hashlib.sha256(f"{session_id}:{step}".encode()).hexdigest()[:32]


async def run_session(
    run: RunContext,
    pipeline: Pipeline,
    events: Iterable[Event],
    *,
    model: str | None,
    tools: list[JSON],
    hooks: Sequence[SessionHook] = (),
) -> SessionStatus:
    """Run (or resume) a session to its end; returns its final status.

    `run.projections` must hold a `Conversation` and a `CounterFold`; `events` is
    the session's journal so far. Terminal errors end the session as `failed` with
    the reason journaled. Cancellation (worker shutdown) propagates and leaves the
    session `running` for durable recovery.
    """
    run.state = fold(run.projections, events)
    conv = _conversation(run)
    if conv.status.finished:
        return conv.status
    resumed = run.counters.started_at is not None
    # Deferred: committed with the first step's intent (nothing to lose before it).
    if resumed:
        await run.record(
            ev.SESSION_RESUMED,
            {"agent": run.agent_name, "steps_done": run.counters.steps},
            defer=True,
        )
    else:
        await run.record(ev.SESSION_STARTED, {"agent": run.agent_name}, defer=True)
    try:
        for hook in hooks:
            await (hook.session_resumed(run) if resumed else hook.session_started(run))
        status = await _steps(run, pipeline, model, tools)
    except BaseException as exc:
        if not isinstance(exc, Exception):  # cancelled (shutdown) or the process dying
            run.journal.discard(run.session_id)
            raise
        status = await _stop_on(run, exc)
    run.journal.forget(run.session_id)
    for hook in hooks:
        try:
            await hook.session_ended(run, status)
        except Exception:  # the session is over: a hook's failure cannot change that
            log.exception("session hook %s failed at the end of %s", hook, run.session_id)
    return status


async def _stop_on(run: RunContext, error: Exception) -> SessionStatus:
    """The session's end for an exception out of its steps."""
    if isinstance(error, SessionFenced):
        # Another worker took the session over: it is theirs now, and this run may
        # write nothing more (its appends are refused anyway).
        run.journal.discard(run.session_id)
        run.journal.forget(run.session_id)
        log.warning("session %s: %s; this run drops it", run.session_id, error)
        raise error
    if isinstance(error, JournalError) and (ended := _ended_elsewhere(run)) is not None:
        return ended
    try:
        return await _end(run, error)
    except SessionFenced:
        run.journal.discard(run.session_id)
        run.journal.forget(run.session_id)
        raise
    except JournalError:
        if (ended := _ended_elsewhere(run)) is not None:
            return ended
        raise


def _ended_elsewhere(run: RunContext) -> SessionStatus | None:
    """If another writer won a seq because it ended the session (a kill of a
    session not yet started, say), the session is theirs: this run stops."""
    run.journal.discard(run.session_id)
    run.journal.forget(run.session_id)
    ended = run.journal.stored_status(run.session_id)
    if ended is None or not ended.finished:
        return None
    log.info("session %s ended elsewhere (%s); this run stops", run.session_id, ended.value)
    return ended


async def _end(run: RunContext, error: Exception) -> SessionStatus:
    if isinstance(error, ControlFlow):
        return await _stop(run, error)
    if isinstance(error, TerminalError):
        return await _fail(run, f"{type(error).__name__}: {error}")
    log.error("session %s crashed", run.session_id, exc_info=error)
    return await _fail(run, f"internal error: {type(error).__name__}: {error}")


async def _steps(
    run: RunContext, pipeline: Pipeline, model: str | None, tools: list[JSON]
) -> SessionStatus:
    sid = run.session_id
    while True:
        conv = _conversation(run)
        if conv.pending:
            pending = conv.pending[0]
            before = conv.open_tools.get(pending.step)
            await pipeline(
                Step(
                    kind="tool",
                    number=pending.step,
                    session_id=sid,
                    call=pending.call,
                    idempotency_key=idempotency_key(sid, pending.step),
                    attempt=1 if before is None else before + 1,
                    retry_reason=None if before is None else _why(conv, before),
                    refusal=pending.refusal,
                )
            )
            continue
        if conv.final is not None:
            await run.record(
                ev.SESSION_COMPLETED,
                {"steps": run.steps, "answer_step": conv.answer_step},
                reason="completed",
            )
            return SessionStatus.COMPLETED
        number, attempt = conv.next_step, 1
        if conv.open_llm is not None and conv.open_llm[0] == number:
            attempt = conv.open_llm[1] + 1
        await pipeline(
            Step(
                kind="llm",
                number=number,
                session_id=sid,
                request=ChatRequest(
                    messages=list(conv.messages),
                    tools=tools,
                    model=model,
                    max_tokens=run.limits.max_tokens_per_call,
                ),
                idempotency_key=idempotency_key(sid, number),
                attempt=attempt,
                retry_reason=None if attempt == 1 else _why(conv, attempt - 1),
                meta={"new_messages": conv.messages[conv.sent :]},
            )
        )


def _why(conv: ConversationState, attempt: int) -> str:
    return (SUSPENDED if conv.paused else INTERRUPTED).format(n=attempt)


def _conversation(run: RunContext) -> ConversationState:
    return run.view(Conversation)


async def _stop(run: RunContext, exc: ControlFlow) -> SessionStatus:
    """A control-flow exit: killed for good, or paused until resumed."""
    payload: JSON = {"reason": exc.reason, "by": exc.by, "steps": run.steps}
    if exc.command is not None:
        payload["command"] = exc.command
    if exc.interrupted is not None:
        payload["interrupted"] = exc.interrupted
    if exc.noticed_at is not None:
        payload["noticed_at"] = round(exc.noticed_at, 6)
    if isinstance(exc, SessionKilled):
        await run.record(ev.SESSION_KILLED, payload, reason=exc.reason)
        return SessionStatus.KILLED
    payload["kind"] = type(exc).__name__
    await run.record(ev.SESSION_PAUSED, payload, reason=exc.reason)
    return SessionStatus.PAUSED


async def _fail(run: RunContext, reason: str) -> SessionStatus:
    await run.record(ev.SESSION_FAILED, {"reason": reason, "steps": run.steps}, reason=reason)
    return SessionStatus.FAILED
