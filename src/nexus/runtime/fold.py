"""The kernel's projections: a session's conversation and counters, folded from
its journal.

Starting a session and resuming one after a crash run the same fold: on resume
over every stored event, while running over each event as `RunContext.record`
appends it. Later features register projections of their own (a loop detector's
history, a breaker's window, pending approvals, an undo stack) in the same way.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nexus import events as ev
from nexus.errors import SessionNotFound
from nexus.runtime.journal import canonical
from nexus.types import JSON, Counters, Event, Projection, SessionStatus, ToolCall


@dataclass(slots=True)
class PendingCall:
    """A tool call of the last LLM response that has no result yet."""

    step: int
    call: ToolCall
    refusal: str | None = None  # why the kernel refuses it without running it


@dataclass
class ConversationState:
    """What the model has said and been told, and where the session stands."""

    created: JSON = field(default_factory=dict)
    messages: list[JSON] = field(default_factory=list)
    sent: int = 0  # messages the model has seen in earlier requests
    pending: list[PendingCall] = field(default_factory=list)
    final: str | None = None
    answer_step: int = 0
    next_step: int = 1
    open_llm: tuple[int, int] | None = None  # (step, attempt) requested, no outcome yet
    open_tools: dict[int, int] = field(default_factory=dict)  # step -> attempt started
    status: SessionStatus = SessionStatus.QUEUED
    paused: bool = False  # the last run ended paused (an open step did not run)
    notes: list[JSON] = field(default_factory=list)  # held until the calls in flight answer


class Conversation(Projection[ConversationState]):
    """The message list, the calls still to run and the steps left open by a crash.

    Args:
        system_prompt: used for sessions whose `session.created` predates the
            recorded agent spec; otherwise the spec's prompt is used.
        max_calls_per_turn: calls of one response past this many are refused.
    """

    name = "conversation"

    def __init__(self, *, system_prompt: str = "", max_calls_per_turn: int = 16) -> None:
        self.system_prompt = system_prompt
        self.max_calls_per_turn = max_calls_per_turn

    def initial(self) -> ConversationState:
        return ConversationState()

    def apply(self, state: ConversationState, event: Event) -> ConversationState:
        k, p = event.kind, event.payload
        if k == ev.LLM_RESPONSE:
            msg = p["message"]
            state.messages.append(msg)
            state.sent = len(state.messages)
            step = int(p["step"])
            calls = [
                ToolCall(str(c.get("id") or ""), c["function"]["name"], c["function"]["arguments"])
                for c in msg.get("tool_calls") or ()
            ]
            state.pending = self._pending(step, calls)
            state.next_step = step + len(calls) + 1
            state.final = None if calls else (msg.get("content") or "")
            state.answer_step = step
            state.open_llm = None
        elif k == ev.TOOL_RESULT:
            step = int(p["step"])
            state.open_tools.pop(step, None)
            state.pending = [c for c in state.pending if c.step != step]
            state.messages.append(
                {"role": "tool", "tool_call_id": p["call_id"], "content": tool_content(p)}
            )
            if not state.pending and state.notes:
                state.messages.extend(state.notes)
                state.notes = []
        elif k == ev.TOOL_CALL:
            state.open_tools[int(p["step"])] = int(p.get("attempt", 1))
            state.paused = False
        elif k == ev.LLM_REQUEST:
            state.open_llm = (int(p["step"]), int(p.get("attempt", 1)))
            state.paused = False
        elif k == ev.LLM_FAILED:
            state.open_llm = None
        elif k == ev.SESSION_CREATED:
            state.created = p
            spec = p.get("spec")
            prompt = spec["system_prompt"] if spec else self.system_prompt
            state.messages = [
                {"role": "system", "content": prompt},
                {"role": "user", "content": p["goal"]},
            ]
        elif k == ev.SESSION_CONTROL and p.get("note"):
            # An operator's note joins the conversation before the next LLM call;
            # after the results of calls still open (a tool result must follow
            # the assistant message that called it).
            note = {"role": "user", "content": f"Note from the operator ({p['by']}): {p['note']}"}
            if state.pending:
                state.notes.append(note)
            else:
                state.messages.append(note)
        elif k in ev.STATUS_BY_KIND:
            state.status = ev.STATUS_BY_KIND[k]
            if k == ev.SESSION_PAUSED:
                state.paused = True
        return state

    def _pending(self, step: int, calls: list[ToolCall]) -> list[PendingCall]:
        """The calls of the response at `step`, numbered `step + 1, step + 2, …`, with
        the kernel's refusals: ids must be unique (resume and the model's reading of
        the results both key on them), and a turn may hold so many calls."""
        pending = [PendingCall(step + i + 1, c) for i, c in enumerate(calls)]
        ids = Tally(c.id for c in calls)
        repeated = sorted(i for i, n in ids.items() if n > 1 or not i)
        if repeated:
            shown = ", ".join(map(repr, repeated))
            why = (
                f"the tool call ids of this response are not unique ({shown} used more than "
                "once or empty); none of its calls ran: call again, giving "
                "each call its own id"
            )
            for c in pending:
                c.refusal = why
        elif len(calls) > self.max_calls_per_turn:
            why = (
                f"refused: this response made {len(calls)} tool calls and at most "
                f"{self.max_calls_per_turn} run per turn; the first {self.max_calls_per_turn} "
                "ran: make the rest in a later turn"
            )
            for c in pending[self.max_calls_per_turn :]:
                c.refusal = why
        return pending


class CounterFold(Projection[Counters]):
    """Steps, tokens and cost: what the limits guard checks."""

    name = "counters"

    def initial(self) -> Counters:
        return Counters()

    def apply(self, state: Counters, event: Event) -> Counters:
        if event.kind in ev.STEP_OUTCOME_KINDS:
            state.steps += 1
        state.tokens_in += event.tokens_in
        state.tokens_out += event.tokens_out
        state.cost_usd += event.cost_usd
        if state.started_at is None and event.kind in (ev.SESSION_STARTED, ev.SESSION_RESUMED):
            state.started_at = event.ts
        return state


def tool_content(payload: JSON) -> str:
    """What the model sees of a tool result."""
    if "error" in payload:
        return f"error ({payload.get('error_type', 'Error')}): {payload['error']}"
    result = payload.get("result")
    return result if isinstance(result, str) else canonical(result)


def fold(projections: Iterable[Projection[Any]], events: Iterable[Event]) -> dict[str, Any]:
    """Each projection's state after `events`, by name."""
    chosen = list(projections)
    state: dict[str, Any] = {p.name: p.initial() for p in chosen}
    first = True
    for event in events:
        if first and event.kind != ev.SESSION_CREATED:
            raise SessionNotFound(f"session {event.session_id} has no session.created event")
        first = False
        for p in chosen:
            state[p.name] = p.apply(state[p.name], event)
    if first:
        raise SessionNotFound("session has no events")
    return state
