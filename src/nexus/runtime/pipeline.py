"""The step pipeline: ordered guards around every LLM call and tool call.

A guard is middleware: `handle(step, run, call_next)` may refuse the step (raise
a terminal error, or answer with an `Outcome` of its own), change it, time it, or
look at its outcome. Guards are sorted by `stage`, outer first, so a guard added
later (kill switch, budgets, approvals, degraded mode, breakers) lands at its
place in DESIGN.md's order without touching the others:

    DETECT(50) → RECORD(90) → KILL(100) → BUDGET(200) → APPROVAL(300)
      → DEGRADED(400) → BREAKER(500) → execute (timeout, retry)

The recorder sits outside the deciding guards, not next to `execute` as in
DESIGN.md's first sketch: a step that a guard refuses or answers itself is then
journaled like any other, so a resumed session never re-decides it, and the
audit log shows what the agent attempted. Detectors sit outermost so they see
each outcome after it is journaled.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nexus.errors import (
    LimitExceeded,
    RecoverableError,
    ToolExecutionError,
    ToolTimeoutError,
    UnknownToolError,
)
from nexus.runtime.journal import Journal, canonical
from nexus.runtime.tools import ToolBox, ToolContext
from nexus.types import JSON, Next, Outcome, Provider, Step

DETECT, RECORD, KILL, BUDGET, APPROVAL, DEGRADED, BREAKER = 50, 90, 100, 200, 300, 400, 500


@dataclass
class RunContext:
    """What the guards of one running session share: who, what, and how far along.

    The counters are rebuilt from the journal when a session resumes.
    """

    session_id: str
    agent_name: str
    journal: Journal
    provider: Provider
    toolbox: ToolBox
    limits: Any  # nexus.runtime.agents.Limits
    tool_context: Callable[[Step], ToolContext]
    started_at: float = field(default_factory=time.time)
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    state: JSON = field(default_factory=dict)  # per-guard scratch space, keyed by guard

    @property
    def elapsed_s(self) -> float:
        """Wall time since the session first started."""
        return time.time() - self.started_at


class Guard(ABC):
    """One link of the pipeline. Subclass, set `stage`, implement `handle`."""

    stage: ClassVar[int] = 1000

    @abstractmethod
    async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
        """Process `step`; call `await call_next(step)` to let it proceed."""


class LimitsGuard(Guard):
    """Refuses a step once the agent's step, token, wall-time or cost limit is spent,
    and bounds a running step by the wall time left."""

    stage = BUDGET

    async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
        lim = run.limits
        if lim.max_steps is not None and run.steps >= lim.max_steps and not step.meta.get("retry"):
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


class JournalRecorder(Guard):
    """Commits each step to the journal: `tool.call` before a tool runs (so a crash
    mid-call is visible on resume), `tool.result` / `llm.response` after."""

    stage = RECORD

    async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
        j = run.journal
        if step.kind == "tool":
            call = step.tool_call()
            if not step.meta.get("retry"):
                await j.append_async(
                    run.session_id,
                    "tool.call",
                    {
                        "step": step.number,
                        "call_id": call.id,
                        "name": call.name,
                        "arguments": call.arguments,
                        "idempotency_key": step.idempotency_key,
                    },
                )
            outcome = await call_next(step)
            payload: JSON = {"step": step.number, "call_id": call.id, "name": call.name}
            if outcome.error is not None:
                payload["error"] = outcome.error
                payload["error_type"] = outcome.error_type
            else:
                payload["result"] = outcome.result
            await j.append_async(
                run.session_id, "tool.result", payload, latency_ms=outcome.latency_ms
            )
            run.steps += 1
            return outcome
        outcome = await call_next(step)
        resp = outcome.chat_response(step.number)
        await j.append_async(
            run.session_id,
            "llm.response",
            {
                "step": step.number,
                "message": resp.message(),
                "model": resp.model,
                "provider": resp.provider,
                "finish_reason": resp.finish_reason,
            },
            tokens_in=resp.usage.tokens_in,
            tokens_out=resp.usage.tokens_out,
            cost_usd=resp.cost_usd,
            latency_ms=outcome.latency_ms,
        )
        run.steps += 1
        run.tokens_in += resp.usage.tokens_in
        run.tokens_out += resp.usage.tokens_out
        run.cost_usd += resp.cost_usd
        return outcome


async def execute(step: Step, run: RunContext) -> Outcome:
    """The innermost link: call the provider, or run the tool under its timeout.

    Tool failures become recoverable outcomes (returned to the model); provider
    failures raise (terminal).
    """
    t0 = time.perf_counter()
    if step.kind == "llm":
        response = await run.provider.complete(step.chat_request())
        return Outcome(response=response, latency_ms=(time.perf_counter() - t0) * 1000)
    call = step.tool_call()
    try:
        result = await _run_tool(step, run)
        _ = canonical(result)  # results are journaled: they must be JSON
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


class Pipeline:
    """Guards sorted by stage around `execute`; build once per session."""

    def __init__(self, guards: Iterable[Guard], run: RunContext) -> None:
        self.guards = sorted(guards, key=lambda g: g.stage)
        self.run = run
        chain: Next = self._execute
        for guard in reversed(self.guards):
            chain = _link(guard, run, chain)
        self._chain = chain

    async def _execute(self, step: Step) -> Outcome:
        return await execute(step, self.run)

    def __call__(self, step: Step) -> Awaitable[Outcome]:
        return self._chain(step)


def _link(guard: Guard, run: RunContext, call_next: Next) -> Next:
    async def link(step: Step) -> Outcome:
        return await guard.handle(step, run, call_next)

    return link


def default_guards() -> list[Guard]:
    """The kernel's own guards."""
    return [LimitsGuard(), JournalRecorder()]
