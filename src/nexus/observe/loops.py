"""Loop detection: a guard that stops a session going round in circles before the
circle costs more.

Three detectors, over the session's history folded from its journal (so a resume
after a crash knows exactly what the crashed run knew):

* **repeat**: the same tool with the same arguments `repeats` times (default 3)
  within the last `window` tool calls (default 20). Arguments are compared
  normalised: parsed as JSON and written back with sorted keys and no spaces
  (text that is not JSON is compared as it is, whitespace collapsed). The same
  tool with other arguments is not a repeat: reading ten files is work.
* **cycle**: a sequence of two to `max_period` calls (default 4), each with its
  normalised arguments, that has gone round `repeats - 1` times in a row: caught at
  the call that would start round `repeats` (`A B A B | A`). Looked for first, so a
  cycle is named as one rather than as the repeat of its first call.
* **near duplicate**: the model's last `repeats` answers nearly the same text: each
  pair of consecutive answers (their text, whitespace collapsed, at least 16
  characters; a turn without text breaks the run) at least `similarity` alike
  (default 0.95) by `difflib.SequenceMatcher.ratio` (2·matches / total length; 1.0
  is identical), asking for the same tool calls up to case and whitespace in their
  arguments. The same words asking for other things ("let me search the next
  city", each time another city) are work, not a loop.

The step that would make the loop (the `repeats`-th repetition, or the next step
after the `repeats`-th near-duplicate answer) does not run. A `loop.detected` event
records the detector, the evidence (the calls or answers with their steps) and the
action, and the guard acts through the control channel: it posts `pause` (default:
a person looks, then kills, or resumes with a note to the model) or `kill`, per
agent (`[limits.loops]` of the agent: `action`, `repeats`, `window`, `max_period`,
`similarity`, `enabled`). A resume after a detection starts the history afresh, so
the resumed session gets its `repeats` tries again before the guard looks again.
"""

from __future__ import annotations

import asyncio
import difflib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nexus import events as ev
from nexus.errors import SessionKilled, SessionSuspended
from nexus.runtime.pipeline import APPROVAL, BUDGET
from nexus.types import Event, Guard, Next, Outcome, Projection, RunContext, Step

STAGE = (BUDGET + APPROVAL) // 2  # after the budgets, before approvals and the call
BY = "loop-guard"

Signature = tuple[str, str]  # tool name, normalised arguments


def normalise(arguments: str) -> str:
    """A tool call's arguments in one canonical text."""
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return " ".join(arguments.split())


MIN_TEXT = 16  # shorter answers ("ok", "") say too little to compare


def _answer(message: dict[str, Any]) -> str:
    return " ".join(str(message.get("content") or "").split())


def _calls_of(message: dict[str, Any]) -> str:
    """The answer's tool calls, loosely: names and arguments normalised, then lower
    case and whitespace collapsed (`"Paris"` and `" paris"` alike; `"Rome"` not)."""
    calls = [
        f"{c['function']['name']}({normalise(c['function']['arguments'])})"
        for c in message.get("tool_calls") or ()
    ]
    return " ".join(";".join(calls).lower().split())


@dataclass
class LoopState:
    """The session's recent tool calls and answers, since its last loop detection
    was resumed."""

    calls: list[tuple[int, Signature]] = field(default_factory=list)  # (step, signature)
    answers: list[tuple[int, str, str]] = field(default_factory=list)  # (step, text, calls)
    detected: bool = False  # the last detection has not been resumed yet


class LoopGuard(Guard, Projection[LoopState]):
    """Refuses the step that would close a loop and pauses or kills the session
    through the control channel; see the module docstring.

    Args:
        post: posts a control command (`Control.post`).
    """

    stage = STAGE
    name = "loops"
    KEEP = 200  # calls and answers kept in the state at most

    def __init__(self, post: Callable[..., Any]) -> None:
        self.post = post

    def initial(self) -> LoopState:
        return LoopState()

    def apply(self, state: LoopState, event: Event) -> LoopState:
        kind, p = event.kind, event.payload
        if kind == ev.TOOL_CALL and int(p.get("attempt", 1)) == 1:
            state.calls.append((int(p["step"]), (str(p["name"]), normalise(str(p["arguments"])))))
            del state.calls[: -self.KEEP]
        elif kind == ev.LLM_RESPONSE:
            message = p.get("message") or {}
            text = _answer(message)
            if len(text) >= MIN_TEXT:
                state.answers.append((int(p["step"]), text, _calls_of(message)))
            else:  # a silent turn (tool calls alone) breaks a run of look-alike answers
                state.answers.clear()
            del state.answers[: -self.KEEP]
        elif kind == ev.LOOP_DETECTED:
            state.detected = True
        elif kind == ev.SESSION_CONTROL and p.get("kind") == "resume" and state.detected:
            # A person looked and let it go on: the history starts afresh.
            state.calls.clear()
            state.answers.clear()
            state.detected = False
        return state

    async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
        policy = run.limits.loops
        if not policy.enabled:
            return await call_next(step)
        state = run.view(self)
        found = None
        if step.kind == "tool" and step.attempt == 1 and step.refusal is None:
            call = step.tool_call()
            sig = (call.name, normalise(call.arguments))
            # The step's intent is journaled (and folded) before the guards see it.
            if state.calls and state.calls[-1][0] == step.number:
                recent = state.calls[-policy.window :]
            else:
                recent = [*state.calls[-(policy.window - 1) :], (step.number, sig)]
            found = _cycle(recent, policy.repeats, policy.max_period) or _repeat(
                recent, sig, policy.repeats, policy.window
            )
        if found is None:  # the calls say nothing: do the answers?
            found = _near_duplicates(state, policy.repeats, policy.similarity)
        if found is None:
            return await call_next(step)
        await self._stop(run, step, found, policy.action)
        raise AssertionError("unreachable")  # _stop always raises

    async def _stop(self, run: RunContext, step: Step, found: dict[str, Any], action: str) -> None:
        reason = f"loop detected ({found['detector']}): {found['summary']}"
        payload = {"step": step.number, **found, "action": action}
        await run.record(ev.LOOP_DETECTED, payload)
        command = await self.post(run.session_id, action, by=BY, reason=reason)
        if action == "kill":
            await asyncio.sleep(0)  # the posted kill cancels this step; Control applies it
            raise SessionKilled(reason, by=BY, command=command.id)
        raise SessionSuspended(reason, by=BY, command=command.id)


def _evidence(calls: list[tuple[int, Signature]]) -> list[dict[str, Any]]:
    return [{"step": s, "tool": name, "arguments": args} for s, (name, args) in calls]


def _repeat(
    recent: list[tuple[int, Signature]], sig: Signature, repeats: int, window: int
) -> dict[str, Any] | None:
    same = [c for c in recent if c[1] == sig]
    if len(same) < repeats:
        return None
    return {
        "detector": "repeat",
        "summary": f"{sig[0]} called {len(same)} times with the same arguments "
        f"in the last {len(recent)} calls",
        "count": len(same),
        "window": window,
        "calls": _evidence(same),
    }


def _cycle(
    recent: list[tuple[int, Signature]], repeats: int, max_period: int
) -> dict[str, Any] | None:
    sigs = [s for _, s in recent]
    for period in range(2, max_period + 1):
        span = period * (repeats - 1) + 1  # rounds gone, and the call starting the next
        if len(sigs) < span:
            break
        tail = sigs[-span:]
        unit = tail[:period]
        if len(set(unit)) < period:
            continue  # a call twice within the unit: a shorter cycle, or a repeat
        if all(tail[i] == tail[i - period] for i in range(period, span)):
            names = " -> ".join(n for n, _ in unit)
            return {
                "detector": "cycle",
                "summary": f"the calls {names} went round {repeats - 1} times and "
                "were starting again",
                "period": period,
                "count": repeats,
                "calls": _evidence(recent[-span:]),
            }
    return None


def _near_duplicates(state: LoopState, repeats: int, similarity: float) -> dict[str, Any] | None:
    if state.detected or len(state.answers) < repeats:
        return None
    last = state.answers[-repeats:]
    ratios = []
    for (_, a, calls_a), (_, b, calls_b) in itertools.pairwise(last):
        if calls_a != calls_b:
            return None  # the same words asking for other things: work, not a loop
        matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
        if matcher.real_quick_ratio() < similarity or matcher.quick_ratio() < similarity:
            return None
        ratio = matcher.ratio()
        if ratio < similarity:
            return None
        ratios.append(round(ratio, 4))
    return {
        "detector": "near_duplicate",
        "summary": f"the last {repeats} answers of the model are nearly the same "
        f"(similarity {min(ratios):.2f} or more)",
        "count": repeats,
        "similarity": min(ratios),
        "answers": [{"step": s, "text": t[:500], "calls": c[:500]} for s, t, c in last],
    }
