"""The kernel's vocabulary: the few types every NEXUS component speaks.

Kept dependency-free (dataclasses only) so that importing it is cheap.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

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


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """One assistant turn returned by a provider."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    provider: str = ""
    cost_usd: float = 0.0
    finish_reason: str = "stop"

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
    """What the agent loop asks of a provider."""

    messages: list[JSON]
    tools: list[JSON] = field(default_factory=list)
    model: str | None = None
    max_tokens: int | None = None


class Provider(Protocol):
    """An LLM endpoint: one method, `complete`."""

    name: str

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer one chat request, or raise a `ProviderError`."""
        ...


StepKind = Literal["llm", "tool"]


@dataclass(slots=True)
class Step:
    """One unit of work passing through the pipeline: an LLM call or a tool call.

    `number` counts the session's steps from 1 and is stable across replays, which
    makes `idempotency_key` stable too.
    """

    kind: StepKind
    number: int
    session_id: str
    request: ChatRequest | None = None
    call: ToolCall | None = None
    idempotency_key: str = ""
    meta: JSON = field(default_factory=dict)

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

    def chat_response(self, step: int) -> ChatResponse:
        """The response of an LLM step; a guard that answered an LLM step without
        one ends the session (`TerminalError`), naming why."""
        if self.response is None:
            from nexus.errors import TerminalError

            why = self.error or "a guard answered the step without a response"
            raise TerminalError(f"LLM step {step} produced no response: {why}")
        return self.response


Next = Callable[[Step], Awaitable[Outcome]]
