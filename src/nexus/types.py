"""The kernel's vocabulary: the few types every NEXUS component speaks.

`Event` (a journal row; its kinds and payloads are in `nexus.events`), the step
that passes through the pipeline (`Step`, `Outcome`, `Next`), and the contracts a
component implements to plug into a session: `Guard` (decides about steps),
`Projection` (state folded from the journal), `SessionHook` (sees a session start,
resume and end), with `RunContext` as what they are handed.

Kept dependency-free (dataclasses only) so that importing it is cheap.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from nexus.observe.costs import Pricing
    from nexus.runtime.agents import Limits
    from nexus.runtime.journal import Journal
    from nexus.runtime.tools import ToolBox, ToolContext

JSON = dict[str, Any]


class SessionStatus(enum.StrEnum):
    """Where a session is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"

    @property
    def finished(self) -> bool:
        """True once the session can no longer change."""
        return self in _FINISHED


_FINISHED = {SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.KILLED}


class Effect(enum.StrEnum):
    """What a tool does to the world, which decides how NEXUS may treat it."""

    READ = "read"
    """Safe to retry; allowed in degraded mode."""
    WRITE = "write"
    """Changes something reversibly: the tool declares an `undo`."""
    IRREVERSIBLE = "irreversible"
    """Cannot be undone; needs approval unless policy says otherwise."""


@dataclass(frozen=True, slots=True)
class Event:
    """One row of the journal."""

    session_id: str
    seq: int
    ts: float
    kind: str
    payload: JSON
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    prev_hash: str = ""
    hash: str = ""

    def to_dict(self) -> JSON:
        """The event as a plain dict (the export and API form)."""
        return {
            "session_id": self.session_id,
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "payload": self.payload,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call as the model asked for it. `arguments` is the raw JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens spent by one LLM call."""

    tokens_in: int = 0
    tokens_out: int = 0
    problem: str | None = None  # the provider reported impossible usage: treated as missing


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """One assistant turn returned by a provider."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    provider: str = ""
    cost_usd: float | None = None  # what the provider says it cost, if it knows
    finish_reason: str = "stop"
    attempts: int = 1  # calls made for this answer, over retries and fallbacks
    failures: tuple[str, ...] = ()  # what failed before it, one line each

    def message(self) -> JSON:
        """The assistant message in OpenAI chat format."""
        msg: JSON = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls
            ]
        return msg


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What the agent loop (or a gateway client) asks of a provider. The optional
    OpenAI parameters are passed through as given; None means "not set"."""

    messages: list[JSON]
    tools: list[JSON] = field(default_factory=list)
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    tool_choice: str | JSON | None = None
    response_format: JSON | None = None
    stream_options: JSON | None = None
    user: str | None = None

    def params(self) -> JSON:
        """The OpenAI parameters that are set (besides messages, tools and model)."""
        return {k: v for k in _PASSED if (v := getattr(self, k)) is not None}


_PASSED = (
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "tool_choice",
    "response_format",
    "stream_options",
    "user",
)


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    """What a provider can do and what it costs: a router and a gateway route on
    these flags, never on the provider's type."""

    tools: bool = True
    streaming: bool = True
    json_mode: bool = False
    context_window: int | None = None
    price_in_per_1m: float | None = None  # the endpoint's own prices, if set
    price_out_per_1m: float | None = None
    local: bool = False  # runs on this machine (loopback, Ollama): free unless priced


@dataclass(frozen=True, slots=True)
class ChatDelta:
    """One piece of a streamed answer: text as it arrives; the last piece carries
    the whole `ChatResponse` (tool calls, usage, cost)."""

    content: str = ""
    response: ChatResponse | None = None


class Provider(Protocol):
    """An LLM endpoint, or a provider wrapping others (retry, fallback, later
    breakers, tracing and the router): `complete`, `stream`, `aclose`, a `profile`."""

    name: str
    profile: ProviderProfile

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer one chat request, or raise a `ProviderError`."""
        ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """Answer piece by piece; the last `ChatDelta` holds the response."""
        ...

    async def aclose(self) -> None:
        """Release connections (idempotent)."""
        ...


StepKind = str
"""`"llm"` or `"tool"` in the kernel; later features add kinds (`"undo"`, `"approval"`)
by registering a `StepType` with the pipeline."""


@dataclass(slots=True)
class Step:
    """One unit of work passing through the pipeline: an LLM call or a tool call.

    `number` counts the session's steps from 1 and is stable across resumes, which
    makes `idempotency_key` stable too. `attempt` counts the tries of this step: a
    step interrupted by a crash is tried again with the next attempt number.
    """

    kind: StepKind
    number: int
    session_id: str
    request: ChatRequest | None = None
    call: ToolCall | None = None
    idempotency_key: str = ""
    attempt: int = 1
    retry_reason: str | None = None
    refusal: str | None = None  # set by the loop: the call is refused, not run
    meta: JSON = field(default_factory=dict)

    @property
    def retry(self) -> bool:
        """True when an earlier attempt of this step started and never finished."""
        return self.attempt > 1

    def tool_call(self) -> ToolCall:
        """The call of a tool step."""
        if self.call is None:
            raise TypeError(f"step {self.number} is an {self.kind} step, not a tool step")
        return self.call

    def chat_request(self) -> ChatRequest:
        """The request of an LLM step."""
        if self.request is None:
            raise TypeError(f"step {self.number} is a {self.kind} step, not an LLM step")
        return self.request


@dataclass(slots=True)
class Outcome:
    """What a step produced: a chat response or a tool result (or a recoverable error)."""

    response: ChatResponse | None = None
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    latency_ms: float = 0.0
    refused_by: str | None = None  # a guard that answered with an error instead of running

    def chat_response(self, step: int) -> ChatResponse:
        """The response of an LLM step; a guard that answered an LLM step without
        one ends the session (`TerminalError`), naming why."""
        if self.response is None:
            from nexus.errors import TerminalError

            why = self.error or "a guard answered the step without a response"
            raise TerminalError(f"LLM step {step} produced no response: {why}")
        return self.response


Next = Callable[[Step], Awaitable[Outcome]]


# -- the contracts of a running session ---------------------------------------------

S = TypeVar("S")


class Projection(ABC, Generic[S]):
    """State rebuilt from a session's journal: `apply` folds one event into it.

    The same fold runs when a session resumes (over its whole journal) and while it
    runs (over each event as it is appended), so after a crash a projection holds
    exactly what it held before. A guard that keeps state is also a `Projection`;
    other components register theirs with the runtime. `name` keys the state in
    `RunContext.state`; keep it unique.
    """

    name: ClassVar[str]

    @abstractmethod
    def initial(self) -> S:
        """The state before the session's first event."""

    @abstractmethod
    def apply(self, state: S, event: Event) -> S:
        """The state after `event` (mutate and return `state`, or return a new one)."""


class SessionHook:
    """Sees a session's life without the loop knowing it: a root span opens and
    closes, leases are granted and revoked. Override what you need; each runs on
    the session's task, and an exception from a hook fails the session."""

    async def session_started(self, run: RunContext) -> None:
        """The session runs for the first time."""

    async def session_resumed(self, run: RunContext) -> None:
        """The session runs again after its worker stopped (crash, shutdown)."""

    async def session_ended(self, run: RunContext, status: SessionStatus) -> None:
        """The session finished: completed, failed or killed."""


@dataclass(slots=True)
class Counters:
    """What a session has spent, folded from its journal (the limits' projection)."""

    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    started_at: float | None = None


def _default_pricing() -> Pricing:
    # Imported here: this module stays dependency-free for everything else.
    from nexus.observe.costs import Pricing

    return Pricing()


@dataclass(eq=False)
class RunContext:
    """What the guards, projections and hooks of one running session share.

    `record` is the only way the session's events are written: it appends to the
    journal and folds the event through every projection, so live state and
    resumed state come from the same code. `pricing` prices the session's LLM calls
    (`nexus.observe.costs`): the recorder's `llm.response`, a budget's estimate.
    """

    session_id: str
    agent_name: str
    journal: Journal
    provider: Provider
    toolbox: ToolBox
    limits: Limits
    tool_context: Callable[[Step], ToolContext]
    projections: list[Projection[Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    max_tool_result_bytes: int = 256 * 1024
    pricing: Pricing = field(default_factory=_default_pricing)

    def fold(self, event: Event) -> None:
        """Apply one event to every projection's state."""
        state = self.state
        for p in self.projections:
            state[p.name] = p.apply(state[p.name], event)

    def view(self, projection: type[Projection[S]] | Projection[S]) -> S:
        """The current state of a projection (by class or instance)."""
        value: S = self.state[projection.name]
        return value

    async def record(
        self,
        kind: str,
        payload: JSON,
        *,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost_usd: float = 0.0,
        latency_ms: float = 0.0,
        reason: str | None = None,
        defer: bool = False,
    ) -> Event:
        """Journal one event of this session and fold it; returns it as stored.
        `defer=True` commits it with the session's next event (`Journal.append_async`)."""
        event = await self.journal.append_async(
            self.session_id,
            kind,
            payload,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost_usd=cost_usd,
            latency_ms=latency_ms,
            reason=reason,
            defer=defer,
        )
        self.fold(event)
        return event

    @property
    def counters(self) -> Counters:
        """Steps, tokens and cost so far."""
        value: Counters = self.state["counters"]
        return value

    @property
    def steps(self) -> int:
        """Steps finished so far."""
        return self.counters.steps

    @property
    def tokens_in(self) -> int:
        """Prompt tokens so far."""
        return self.counters.tokens_in

    @property
    def tokens_out(self) -> int:
        """Completion tokens so far."""
        return self.counters.tokens_out

    @property
    def cost_usd(self) -> float:
        """Cost so far."""
        return self.counters.cost_usd

    @property
    def started_at(self) -> float:
        """When the session first started (now, if it has not yet)."""
        started = self.counters.started_at
        return time.time() if started is None else started

    @property
    def elapsed_s(self) -> float:
        """Wall time since the session first started."""
        return time.time() - self.started_at


class Guard(ABC):
    """One deciding link of the pipeline. Subclass, set `stage`, implement `handle`.

    Guards run in `stage` order, outer first, inside the recorder: whatever a guard
    does (refuse with an error, answer with an `Outcome` of its own, or let the step
    proceed) is journaled as the step's outcome. A guard that keeps state also
    subclasses `Projection`; one that sees the session's life, `SessionHook`.
    """

    stage: ClassVar[int] = 1000

    @abstractmethod
    async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
        """Process `step`; call `await call_next(step)` to let it proceed."""
