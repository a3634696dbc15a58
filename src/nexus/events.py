"""The journal's vocabulary: every event kind and the shape of its payload, once.

A component that writes or reads events names the kind with a constant from here
and, for the kernel's own kinds, finds the payload's keys in the `TypedDict` of the
same name. Later features add their kinds here (or in their own module, with a
constant and a `TypedDict` in the same style) and register what a kind does to a
session's status in `STATUS_BY_KIND`.

Kept dependency-free: it is imported on every append.
"""

from __future__ import annotations

from typing import Any, Final, NotRequired, TypedDict

from nexus.types import JSON, SessionStatus

# -- kinds --------------------------------------------------------------------------

SESSION_CREATED: Final = "session.created"
SESSION_STARTED: Final = "session.started"
SESSION_RESUMED: Final = "session.resumed"
SESSION_PAUSED: Final = "session.paused"
SESSION_COMPLETED: Final = "session.completed"
SESSION_FAILED: Final = "session.failed"
SESSION_KILLED: Final = "session.killed"
SESSION_CONTROL: Final = "session.control"  # a command applied that keeps the status
LLM_REQUEST: Final = "llm.request"
LLM_RESPONSE: Final = "llm.response"
LLM_FAILED: Final = "llm.failed"
TOOL_CALL: Final = "tool.call"
TOOL_RESULT: Final = "tool.result"

TERMINAL_KINDS: Final = frozenset({SESSION_COMPLETED, SESSION_FAILED, SESSION_KILLED})
"""Kinds after which a session never changes again."""

STATUS_BY_KIND: Final[dict[str, SessionStatus]] = {
    SESSION_CREATED: SessionStatus.QUEUED,
    SESSION_STARTED: SessionStatus.RUNNING,
    SESSION_RESUMED: SessionStatus.RUNNING,
    SESSION_PAUSED: SessionStatus.PAUSED,
    SESSION_COMPLETED: SessionStatus.COMPLETED,
    SESSION_FAILED: SessionStatus.FAILED,
    SESSION_KILLED: SessionStatus.KILLED,
}
"""Which kinds move a session to which status: the session index is a projection
of the journal, never written on its own."""

STEP_OUTCOME_KINDS: Final = frozenset({LLM_RESPONSE, TOOL_RESULT})
"""Kinds that finish a step and count against `max_steps`."""

# -- budgets (nexus.observe.budgets) --------------------------------------------------

BUDGET_RESERVED: Final = "budget.reserved"
BUDGET_ALERT: Final = "budget.alert"
BUDGET_EXCEEDED: Final = "budget.exceeded"
LOOP_DETECTED: Final = "loop.detected"

ALERT_KINDS: Final = frozenset({BUDGET_ALERT, BUDGET_EXCEEDED, LOOP_DETECTED})
"""Kinds that are alerts: listed by `nexus alerts`, shown on the dashboard, POSTed to
the alert webhook."""


# -- cost accounting (issue 11) --
LLM_LOST: Final = "llm.lost"  # sent, never answered (a crash, a kill): billed, estimated


# -- payloads -----------------------------------------------------------------------


class AgentSpec(TypedDict):
    """The agent as it was resolved when the session was created. A resumed session
    runs with this, not with the agent's current definition."""

    name: str
    system_prompt: str
    model: str | None
    toolkits: list[str]
    tools: list[JSON]  # the OpenAI `tools` entries the model is offered
    limits: JSON  # `Limits` as plain data, the session's budget laid over the agent's


class SessionCreated(TypedDict):
    goal: str
    agent: str
    priority: int
    labels: dict[str, str]
    spec: NotRequired[AgentSpec]  # absent in sessions created before the spec was recorded
    replay: NotRequired[str]
    replay_pace_s: NotRequired[float]
    model: NotRequired[str]
    limits: NotRequired[JSON]


class SessionStarted(TypedDict):
    agent: str


class SessionResumed(TypedDict):
    agent: str
    steps_done: int


class SessionCompleted(TypedDict):
    steps: int
    answer_step: int  # the `llm.response` holding the answer: it is stored once


class SessionFailed(TypedDict):
    reason: str
    steps: int


class SessionStopped(TypedDict):
    """`session.killed` and `session.paused`: a control-flow exit."""

    reason: str
    by: str  # who or what decided it: a user, a guard, a trigger
    steps: int
    kind: NotRequired[str]  # the exit's class, for `session.paused`
    command: NotRequired[int]  # the control-channel command it applied
    interrupted: NotRequired[str]  # what happened to a step cut short


class SessionControl(TypedDict):
    """A control-channel command applied without changing the status (a resume)."""

    command: int
    kind: str
    by: str
    reason: str
    note: NotRequired[str]  # an operator's note, told to the model before its next call


class LlmRequest(TypedDict):
    """Committed before the call goes out: a call in flight at a crash is known."""

    step: int
    attempt: int
    model: str | None
    params: JSON  # max_tokens and the other request parameters that were set
    messages: list[JSON]  # the messages added since the previous LLM step
    tools: int  # how many tools were offered (their specs are in the spec)
    retry_reason: NotRequired[str]


class LlmResponse(TypedDict):
    step: int
    message: JSON
    model: str
    provider: str
    finish_reason: str
    attempts: NotRequired[int]
    failures: NotRequired[list[str]]
    usage_problem: NotRequired[str]  # what was wrong with the usage block (then counted)
    usage_estimated: NotRequired[bool]  # tokens counted with tiktoken, not reported
    cost_estimated: NotRequired[bool]  # the cost is of counted tokens
    unpriced: NotRequired[bool]  # no price known for the model at that endpoint: cost 0


class LlmFailed(TypedDict):
    """An LLM step that ended without a response: refused by a guard, or the
    provider failed."""

    step: int
    attempt: int
    error: str
    error_type: str
    by: str  # the guard that refused, or "execute"


class ToolCallStarted(TypedDict):
    step: int
    attempt: int
    call_id: str
    name: str
    arguments: str
    idempotency_key: str
    retry_reason: NotRequired[str]


class ToolResult(TypedDict):
    step: int
    attempt: int
    call_id: str
    name: str
    result: NotRequired[Any]
    error: NotRequired[str]
    error_type: NotRequired[str]
    by: NotRequired[str]  # set when a guard refused the call instead of the tool failing


# -- budgets ------------------------------------------------------------------------


class BudgetUse(TypedDict):
    """One budget as a reservation found it."""

    scope: str  # "session", "agent:NAME" or "global"
    limit_usd: float
    used_usd: float  # spent and reserved in the window before this call
    window_s: NotRequired[float]  # absent for the session's budget (its whole life)


class BudgetReserved(TypedDict):
    """The worst-case cost of one LLM call, held against every budget that applies
    before the call goes out; its `llm.response` (or `llm.lost`) settles it."""

    step: int
    attempt: int
    usd: float
    prompt_tokens: int  # counted
    max_tokens: int | None
    budgets: list[BudgetUse]


class BudgetAlert(TypedDict):
    """A budget crossed its alert threshold (80% by default), reservations counted."""

    step: int
    scope: str
    limit_usd: float
    used_usd: float
    fraction: float
    window_s: NotRequired[float]


class BudgetExceeded(TypedDict):
    """The call that would have passed a budget did not go out."""

    step: int
    attempt: int
    scope: str
    limit_usd: float
    used_usd: float
    needed_usd: float
    action: str  # "pause" or "kill"
    window_s: NotRequired[float]


# -- cost accounting (issue 11) --


class LlmLost(TypedDict):
    """An LLM request that was sent but whose response was lost: the worker died with
    it in flight (journaled when the session resumes), or a kill cut it short. The
    provider billed it, so its row carries estimated `tokens_in`/`tokens_out`/`cost_usd`
    (`nexus.observe.lost`): written once per lost attempt."""

    step: int
    attempt: int
    model: str | None
    estimated: bool  # always True
    why: str  # "crash" (no outcome at resume) or "interrupted" (a kill)
    provider: NotRequired[str]  # the endpoint it is priced at
    unpriced: NotRequired[bool]
