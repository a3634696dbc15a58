"""The step pipeline: a fixed recording layer around the deciding guards, around
the step's executor.

    record intent → guards by stage (KILL 100 → BUDGET 200 → APPROVAL 300
      → DEGRADED 400 → BREAKER 500 → …) → execute → record outcome

Recording is not a guard. The recorder journals each step's intent before any
guard sees it (`llm.request`, `tool.call`: a crash mid-step is visible on resume)
and its outcome after, whatever happened in between: the executor's result, an
answer a guard gave instead, a guard's refusal, or the provider's failure. So a
resumed session never re-decides a step, the audit shows what the agent
attempted, and no session ends with a started step that has no outcome row. A
cancelled step (the worker stops) is left open on purpose: it is tried again on
resume, as its next attempt.

Each kind of step is a `StepType` in a table (`llm`, `tool`; later `undo`,
`approval`): what it records before and after, and how it executes. A new kind of
step is a new entry, not an edit of the pipeline.

An LLM step's outcome is priced here, the one place (`RunContext.pricing`,
`nexus.observe.costs`): tokens and cost go in the `llm.response` row's columns, and
a call a kill cut short in flight is followed by its `llm.lost` (`nexus.observe.lost`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nexus import events as ev
from nexus.errors import (
    LimitExceeded,
    NexusError,
    RecoverableError,
    SessionSuspended,
    TerminalError,
    ToolCallRefused,
    ToolExecutionError,
    ToolResultTooLarge,
    ToolTimeoutError,
    UnknownToolError,
)
from nexus.observe.lost import INTERRUPTED, lost_record
from nexus.runtime.journal import canonical
from nexus.types import JSON, Guard, Next, Outcome, RunContext, Step

KILL, BUDGET, APPROVAL, DEGRADED, BREAKER = 100, 200, 300, 400, 500

Record = tuple[str, JSON, dict[str, Any]]
"""An event to journal: kind, payload, and `Journal.append` keywords (tokens, cost…)."""


@dataclass(frozen=True, slots=True)
class StepType:
    """One kind of step: how it runs and what the recorder journals for it.

    Attributes:
        kind: the `Step.kind` it serves.
        execute: the innermost link: does the work.
        intent: the event committed before any guard sees the step.
        outcome: the event committed after, from the step's `Outcome`.
        failure: the events committed when a guard refuses the step or execution
            raises (its outcome, and what else it leaves to account for); `by` names
            the guard (or `"execute"`).
        recover: what a `RecoverableError` from a guard becomes: an `Outcome` to
            record and return (tool steps), or None to treat it as terminal.
    """

    kind: str
    execute: Callable[[Step, RunContext], Awaitable[Outcome]]
    intent: Callable[[Step, RunContext], Record]
    outcome: Callable[[Step, Outcome, RunContext], Record]
    failure: Callable[[Step, BaseException, str, RunContext], Sequence[Record]]
    recover: Callable[[Step, RecoverableError], Outcome | None]


# -- the LLM step -------------------------------------------------------------------


async def _execute_llm(step: Step, run: RunContext) -> Outcome:
    t0 = time.perf_counter()
    step.meta["sent"] = True  # from here a kill cuts short a call the provider has
    response = await run.provider.complete(step.chat_request())
    return Outcome(response=response, latency_ms=(time.perf_counter() - t0) * 1000)


def _llm_intent(step: Step, run: RunContext) -> Record:
    request = step.chat_request()
    payload: JSON = {
        "step": step.number,
        "attempt": step.attempt,
        "model": request.model,
        "params": {"max_tokens": request.max_tokens} if request.max_tokens else {},
        "messages": step.meta.get("new_messages", request.messages),
        "tools": len(request.tools),
    }
    if step.retry_reason:
        payload["retry_reason"] = step.retry_reason
    return ev.LLM_REQUEST, payload, {}


def _llm_outcome(step: Step, outcome: Outcome, run: RunContext) -> Record:
    resp = outcome.chat_response(step.number)
    payload: JSON = {
        "step": step.number,
        "message": resp.message(),
        "model": resp.model,
        "provider": resp.provider,
        "finish_reason": resp.finish_reason,
    }
    if resp.attempts != 1:
        payload["attempts"] = resp.attempts
        payload["failures"] = list(resp.failures)
    # Missing or impossible usage is never written into the totals: the tokens are
    # counted instead, and the payload says so (and what was wrong).
    charge = run.pricing.charge(step.chat_request(), resp)
    charge.annotate(payload)
    metrics = {
        "tokens_in": charge.tokens_in,
        "tokens_out": charge.tokens_out,
        "cost_usd": charge.cost_usd,
        "latency_ms": outcome.latency_ms,
    }
    return ev.LLM_RESPONSE, payload, metrics


def _llm_failure(step: Step, exc: BaseException, by: str, run: RunContext) -> Sequence[Record]:
    payload: JSON = {
        "step": step.number,
        "attempt": step.attempt,
        "error": str(exc),
        "error_type": type(exc).__name__,
        "by": by,
    }
    interrupted = getattr(exc, "interrupted", None)
    if interrupted is None:
        return [(ev.LLM_FAILED, payload, {})]
    # Cut short in flight (a kill): the provider has the request and bills it.
    payload["interrupted"] = interrupted
    if not step.meta.get("sent"):  # stopped before it went out (a guard's refusal)
        return [(ev.LLM_FAILED, payload, {})]
    request = step.chat_request()
    lost = lost_record(
        run,
        step.number,
        step.attempt,
        request.model,
        request.max_tokens,
        INTERRUPTED,
        messages=request.messages,
        tools=request.tools,
    )
    return [(ev.LLM_FAILED, payload, {}), lost]


# -- the tool step ------------------------------------------------------------------


async def _execute_tool(step: Step, run: RunContext) -> Outcome:
    """Run the tool under its timeout. Tool failures become recoverable outcomes
    (returned to the model)."""
    t0 = time.perf_counter()
    call = step.tool_call()
    try:
        result = await _run_tool(step, run)
        size = len(canonical(result).encode())  # results are journaled: they must be JSON
        if size > run.max_tool_result_bytes:
            raise ToolResultTooLarge(
                f"{call.name} returned {size} bytes, over the limit of "
                f"{run.max_tool_result_bytes} (NEXUS_MAX_TOOL_RESULT_BYTES): ask for less, "
                "for example a part of the file or a narrower query"
            )
    except RecoverableError as exc:
        return _failed(exc, t0)
    except (TypeError, ValueError) as exc:
        return _failed(ToolExecutionError(f"{call.name} returned a non-JSON result: {exc}"), t0)
    except Exception as exc:  # a tool's own bug is the model's problem to route around
        return _failed(ToolExecutionError(f"{call.name} raised {type(exc).__name__}: {exc}"), t0)
    return Outcome(result=result, latency_ms=(time.perf_counter() - t0) * 1000)


async def _run_tool(step: Step, run: RunContext) -> Any:
    call = step.tool_call()
    tool = run.toolbox.get(call.name)
    if tool is None:
        known = ", ".join(run.toolbox.names()) or "none"
        raise UnknownToolError(f"unknown tool {call.name!r}; available tools: {known}")
    args = tool.parse(call.arguments)
    try:
        async with asyncio.timeout(tool.timeout_s):
            return await tool.invoke(run.tool_context(step), args)
    except TimeoutError:
        raise ToolTimeoutError(f"{call.name} timed out after {tool.timeout_s:g}s") from None


def _failed(exc: RecoverableError, t0: float) -> Outcome:
    return Outcome(
        error=str(exc),
        error_type=type(exc).__name__,
        latency_ms=(time.perf_counter() - t0) * 1000,
    )


def _tool_intent(step: Step, run: RunContext) -> Record:
    call = step.tool_call()
    payload: JSON = {
        "step": step.number,
        "attempt": step.attempt,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "idempotency_key": step.idempotency_key,
    }
    if step.retry_reason:
        payload["retry_reason"] = step.retry_reason
    return ev.TOOL_CALL, payload, {}


def _tool_head(step: Step) -> JSON:
    call = step.tool_call()
    return {"step": step.number, "attempt": step.attempt, "call_id": call.id, "name": call.name}


def _tool_outcome(step: Step, outcome: Outcome, run: RunContext) -> Record:
    payload = _tool_head(step)
    if outcome.error is not None:
        payload["error"] = outcome.error
        payload["error_type"] = outcome.error_type
        if outcome.refused_by is not None:
            payload["by"] = outcome.refused_by
    else:
        payload["result"] = outcome.result
    return ev.TOOL_RESULT, payload, {"latency_ms": outcome.latency_ms}


def _tool_failure(step: Step, exc: BaseException, by: str, run: RunContext) -> Sequence[Record]:
    payload = _tool_head(step)
    interrupted = getattr(exc, "interrupted", None)
    if interrupted is not None:  # cut short while it ran (a kill)
        payload.update(error=f"interrupted: {interrupted}", error_type=type(exc).__name__, by=by)
    else:
        payload.update(error=f"refused: {exc}", error_type=type(exc).__name__, by=by)
    return [(ev.TOOL_RESULT, payload, {})]


def _tool_recover(step: Step, exc: RecoverableError) -> Outcome:
    return Outcome(error=str(exc), error_type=type(exc).__name__, refused_by=_by(exc))


LLM = StepType("llm", _execute_llm, _llm_intent, _llm_outcome, _llm_failure, lambda s, e: None)
TOOL = StepType("tool", _execute_tool, _tool_intent, _tool_outcome, _tool_failure, _tool_recover)
STEP_TYPES: Mapping[str, StepType] = {t.kind: t for t in (LLM, TOOL)}


# -- the kernel's guard -------------------------------------------------------------


class LimitsGuard(Guard):
    """Refuses a step once the agent's step, token, wall-time or cost limit is spent,
    and bounds a running step by the wall time left."""

    stage = BUDGET

    async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
        lim = run.limits
        if lim.max_steps is not None and run.steps >= lim.max_steps and not step.retry:
            raise LimitExceeded(f"step limit reached: {run.steps} of max_steps={lim.max_steps}")
        tokens = run.tokens_in + run.tokens_out
        if lim.max_tokens is not None and tokens >= lim.max_tokens:
            raise LimitExceeded(f"token limit reached: {tokens} of max_tokens={lim.max_tokens}")
        if lim.max_cost_usd is not None and run.cost_usd >= lim.max_cost_usd:
            raise LimitExceeded(
                f"cost limit reached: ${run.cost_usd:.4f} of max_cost_usd=${lim.max_cost_usd}"
            )
        if lim.max_wall_s is None:
            return await call_next(step)
        left = lim.max_wall_s - run.elapsed_s
        if left <= 0:
            raise LimitExceeded(f"wall-time limit reached: max_wall_s={lim.max_wall_s}")
        try:
            async with asyncio.timeout(left):
                return await call_next(step)
        except TimeoutError:
            raise LimitExceeded(
                f"wall-time limit reached during step {step.number}: max_wall_s={lim.max_wall_s}"
            ) from None


def default_guards() -> list[Guard]:
    """The kernel's own guards."""
    return [LimitsGuard()]


# -- the pipeline -------------------------------------------------------------------


def _by(exc: BaseException) -> str:
    return getattr(exc, "nexus_refused_by", None) or "execute"


class Pipeline:
    """The recorder around guards sorted by stage around the executors; one per session.

    Args:
        guards: the deciding guards (any order; sorted by `stage`).
        run: the session's context.
        step_types: the executors by step kind (default: `llm` and `tool`).
    """

    def __init__(
        self,
        guards: Iterable[Guard],
        run: RunContext,
        step_types: Mapping[str, StepType] = STEP_TYPES,
    ) -> None:
        self.guards = sorted(guards, key=lambda g: g.stage)
        self.run = run
        self.step_types = dict(step_types)
        chain: Next = self._execute
        for guard in reversed(self.guards):
            chain = _link(guard, run, chain)
        self._chain = chain

    async def _execute(self, step: Step) -> Outcome:
        try:
            return await self._type(step).execute(step, self.run)
        except NexusError as exc:
            _tag(exc, "execute")
            raise

    def _type(self, step: Step) -> StepType:
        try:
            return self.step_types[step.kind]
        except KeyError:
            raise TerminalError(f"no executor for steps of kind {step.kind!r}") from None

    async def __call__(self, step: Step) -> Outcome:
        """Record the step's intent, run it through the guards, record its outcome."""
        st = self._type(step)
        run = self.run
        await _commit(run, st.intent(step, run))
        try:
            if step.refusal is not None:
                outcome = Outcome(
                    error=step.refusal, error_type=ToolCallRefused.__name__, refused_by="kernel"
                )
            else:
                outcome = await self._chain(step)
        except RecoverableError as exc:
            recovered = st.recover(step, exc)
            if recovered is None:
                await _commit(run, *st.failure(step, exc, _by(exc), run), outcome=True)
                raise TerminalError(f"{type(exc).__name__}: {exc}") from exc
            outcome = recovered
        except SessionSuspended:
            # Not an outcome: the step did not run and is tried again when the session
            # resumes; `session.paused` (journaled by the loop) says who and why.
            raise
        except Exception as exc:  # kills, terminal refusals, provider failures, kernel bugs
            await _commit(run, *st.failure(step, exc, _by(exc), run), outcome=True)
            raise
        try:
            record = st.outcome(step, outcome, run)
        except TerminalError as exc:  # a guard answered an LLM step without a response
            await _commit(run, *st.failure(step, exc, "kernel", run), outcome=True)
            raise
        await _commit(run, record, outcome=True)
        return outcome


async def _commit(run: RunContext, *records: Record, outcome: bool = False) -> None:
    for kind, payload, metrics in records:
        # An outcome rides with whatever the session journals next (the next step's
        # intent, or the session's end): committed before the next step starts.
        await run.record(kind, payload, defer=outcome, **metrics)


def _tag(exc: BaseException, by: str) -> None:
    if getattr(exc, "nexus_refused_by", None) is None:
        exc.nexus_refused_by = by  # type: ignore[attr-defined]


def _link(guard: Guard, run: RunContext, call_next: Next) -> Next:
    name = type(guard).__name__

    async def link(step: Step) -> Outcome:
        try:
            return await guard.handle(step, run, call_next)
        except NexusError as exc:
            _tag(exc, name)  # the innermost tag wins: who refused, not who passed it on
            raise

    return link
