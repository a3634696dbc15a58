"""Calls the provider billed that the journal never got an answer for: `llm.lost`.

An `llm.request` is committed before its call goes out. If the worker dies with the
call in flight, the provider has served (and billed) it, but no `llm.response` will
ever carry its tokens: measured before this, 123 worker crashes left 1,396 requests
served for 930 journaled responses. So when a session resumes, every request attempt
with no outcome is journaled as `llm.lost` with estimated tokens and cost; and a kill
that aborts a call in flight (`llm.failed` with `interrupted`) is followed by one at
once. The totals (`CounterFold`, the session index) sum their columns like any other.

The estimate (`Pricing.unanswered`): the prompt is counted with tiktoken (the
conversation as it was sent, with the agent's tools); the completion is the session's
mean completion so far, rounded up, which is the expected bill of one more call of the
same session; with no answer yet to average, the call's max_tokens cap, the most it
could have billed (an estimate that errs high rather than hiding a cost). Never more
than the cap.

Exactly once: `LostCalls` folds which attempts are open and which an `llm.lost`
already accounts for, so a resume after a resume (a crash in a crash), on any worker,
writes nothing twice. A request followed by `session.paused` did not go out (a pause
applies before the step runs), nor did one refused by a guard (`llm.failed` without
`interrupted`): neither is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nexus import events as ev
from nexus.observe.costs import UNPRICED, Charge
from nexus.types import JSON, Event, Projection, RunContext, SessionHook

CRASH, INTERRUPTED = "crash", "interrupted"


@dataclass
class LostState:
    """What a session's journal says about its LLM calls' accounting."""

    open: dict[tuple[int, int], JSON] = field(default_factory=dict)  # (step, attempt) → request
    accounted: set[tuple[int, int]] = field(default_factory=set)  # attempts with an llm.lost
    responses: int = 0
    completion_tokens: int = 0  # of the responses: their mean estimates a lost completion

    @property
    def mean_completion(self) -> float | None:
        """The mean completion tokens of the session's responses, None before one."""
        return self.completion_tokens / self.responses if self.responses else None


class LostCalls(Projection[LostState], SessionHook):
    """Folds the open and accounted LLM attempts; on resume, journals an `llm.lost`
    for each attempt that was sent and never answered.

    Register it as a projection and as the first session hook: it must account for
    the lost call before another hook can end the session (a kill applied at resume).
    """

    name = "lost_calls"

    def initial(self) -> LostState:
        return LostState()

    def apply(self, state: LostState, event: Event) -> LostState:
        k, p = event.kind, event.payload
        if k == ev.LLM_REQUEST:
            state.open[(int(p["step"]), int(p.get("attempt", 1)))] = {
                "model": p.get("model"),
                "max_tokens": (p.get("params") or {}).get("max_tokens"),
            }
        elif k == ev.LLM_RESPONSE:
            step = int(p["step"])
            state.open = {key: v for key, v in state.open.items() if key[0] != step}
            state.responses += 1
            state.completion_tokens += event.tokens_out
        elif k in (ev.LLM_FAILED, ev.LLM_LOST):
            key = (int(p["step"]), int(p.get("attempt", 1)))
            state.open.pop(key, None)
            if k == ev.LLM_LOST:
                state.accounted.add(key)
        elif k == ev.SESSION_PAUSED:
            state.open.clear()  # a pause applies before a step runs: nothing went out
        return state

    async def session_resumed(self, run: RunContext) -> None:
        """Journal the calls the last run left in flight."""
        state = run.view(self)
        for (step, attempt), request in sorted(state.open.items()):
            if (step, attempt) in state.accounted:
                continue
            kind, payload, metrics = lost_record(
                run, step, attempt, request.get("model"), request.get("max_tokens"), CRASH
            )
            await run.record(kind, payload, defer=True, **metrics)


def lost_record(
    run: RunContext,
    step: int,
    attempt: int,
    model: str | None,
    max_tokens: int | None,
    why: str,
    messages: list[JSON] | None = None,
    tools: list[JSON] | None = None,
) -> tuple[str, JSON, dict[str, Any]]:
    """The `llm.lost` event of attempt `attempt` of LLM step `step`: its estimated
    tokens and cost (see the module doc), priced at the session's provider.

    `messages` and `tools` are the request's; by default the conversation as folded
    (at resume it is what the lost request sent) and the agent's recorded tools."""
    if messages is None or tools is None:
        conv = run.state.get("conversation")
        if messages is None:
            messages = list(getattr(conv, "messages", []))
        if tools is None:
            spec = (getattr(conv, "created", None) or {}).get("spec") or {}
            tools = spec.get("tools") or list(run.toolbox.specs)
    state = run.state.get(LostCalls.name)
    provider = run.provider.name
    charge: Charge = run.pricing.unanswered(
        messages,
        tools,
        model=model,
        provider=provider,
        max_tokens=max_tokens,
        mean_completion=state.mean_completion if isinstance(state, LostState) else None,
    )
    payload: JSON = {
        "step": step,
        "attempt": attempt,
        "model": model,
        "estimated": True,
        "why": why,
        "provider": provider,
    }
    if charge.source == UNPRICED:
        payload["unpriced"] = True
    metrics = {
        "tokens_in": charge.tokens_in,
        "tokens_out": charge.tokens_out,
        "cost_usd": charge.cost_usd,
    }
    return ev.LLM_LOST, payload, metrics
