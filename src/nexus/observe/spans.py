"""A session's trace, rebuilt from its journal: the span tree that `nexus traces show`,
the trace API route and the dashboard's waterfall show, and that the OTLP export sends.

    invoke_agent {agent}                 the session: session.created → its end
      step {n}                           one agent step: an LLM turn and the tools it called
        chat {model}                     one LLM attempt: llm.request → llm.response,
                                         llm.failed or llm.lost
        execute_tool {tool}              one tool attempt: tool.call → tool.result

Everything comes from the events: start and end times are event timestamps (with the
event's seq beside them), tokens and cost the event rows' columns, statuses and failure
reasons their payloads. Control-flow events (started, resumed, paused, resumed with a
note, killed, failed, completed) and `loop.detected` are span events on the root.

Ids are deterministic: the trace id is a hash of the session id, a span id a hash of
(session, kind, step, attempt). A resumed session continues the same trace, and
rebuilding or exporting a trace twice gives the same ids.

An attempt that never got its outcome (the worker crashed while it ran) ends when the
next attempt of its step starts, or when `llm.lost` (cost accounting) says the provider
billed it, with the reason the next attempt gives. Spans whose closing event is not in
the journal yet (a running session, a step in flight, a paused session) are open: no
end, status `unset`.

`TraceBuilder` folds one event at a time and says which steps are finished, so the
live exporter (`nexus.observe.otel`) and the views share one definition of the tree.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from nexus import events as ev
from nexus.runtime.redact import Redactor
from nexus.types import JSON, Event

INVOKE_AGENT: Final = "invoke_agent"
STEP: Final = "step"
CHAT: Final = "chat"
EXECUTE_TOOL: Final = "execute_tool"

OK: Final = "ok"
ERROR: Final = "error"
UNSET: Final = "unset"  # still open

ROOT_EVENT_KINDS: Final = frozenset(
    {
        ev.SESSION_STARTED,
        ev.SESSION_RESUMED,
        ev.SESSION_PAUSED,
        ev.SESSION_CONTROL,
        ev.SESSION_KILLED,
        ev.SESSION_FAILED,
        ev.SESSION_COMPLETED,
        *ev.ALERT_KINDS,  # budget alerts, loops detected
    }
)
"""Kinds shown as span events of the root span."""

LOST_WHY: Final = {
    "crash": "the worker stopped with the call in flight",
    "interrupted": "a kill cut the call short",
}

_BOUNDARY: Final = frozenset({ev.LLM_REQUEST, ev.SESSION_PAUSED, *ev.TERMINAL_KINDS})
# Finished steps are handed out at the next of these: a later step starts, or the
# session stops. They are never deferred (`Journal.append_async`), so whatever they
# hand out is durable, and an `llm.lost` journaled after a step's last outcome still
# reaches its span.

_CONTENT_KEYS: Final = frozenset({"note", "goal", "message", "messages", "result", "arguments"})
_MAX_EVENT_TEXT: Final = 1000


def trace_id(session_id: str) -> str:
    """The 32-hex-digit trace id of a session (the same in every run of it)."""
    return _hex(f"nexus-trace:{session_id}", 16)


def span_id(session_id: str, operation: str, step: int = 0, attempt: int = 0) -> str:
    """The 16-hex-digit id of a span: the root is `(INVOKE_AGENT, 0, 0)`, a step
    `(STEP, n, 0)`, an attempt `(CHAT or EXECUTE_TOOL, n, attempt)`."""
    return _hex(f"nexus-span:{session_id}:{operation}:{step}:{attempt}", 8)


def _hex(text: str, size: int) -> str:
    digest = hashlib.sha256(text.encode()).digest()[:size]
    if not any(digest):  # all-zero ids are invalid in OpenTelemetry
        digest = b"\x01" * size
    return digest.hex()


@dataclass(slots=True)
class SpanEvent:
    """Something that happened at one moment of a span (a control-flow event)."""

    name: str
    ts: float
    seq: int
    attributes: JSON = field(default_factory=dict)

    def to_dict(self) -> JSON:
        """The event as plain data."""
        return {"name": self.name, "ts": self.ts, "seq": self.seq, "attributes": self.attributes}


@dataclass(eq=False, slots=True)
class Span:
    """One span of a session's trace.

    `attributes` holds what the operation says about itself (models, tool name,
    provider); `otel_attributes()` adds the usage, cost, step and error attributes
    from the fields, in the GenAI semantic conventions' names.
    """

    span_id: str
    parent_id: str | None
    name: str
    operation: str
    start: float
    start_seq: int
    end: float | None = None
    end_seq: int | None = None
    status: str = UNSET
    error: str | None = None
    error_type: str | None = None
    step: int | None = None
    attempt: int | None = None
    retry_reason: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    cost_estimated: bool = False
    attributes: JSON = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    children: list[Span] = field(default_factory=list)

    @property
    def open(self) -> bool:
        """True while the span's closing event is not in the journal."""
        return self.end is None

    @property
    def duration_ms(self) -> float | None:
        """Milliseconds from start to end (None while open)."""
        return None if self.end is None else round((self.end - self.start) * 1000, 3)

    def close(
        self,
        event: Event,
        status: str,
        error: str | None = None,
        error_type: str | None = None,
    ) -> None:
        """End the span at `event` with `status` (and the failure reason)."""
        self.end, self.end_seq, self.status = event.ts, event.seq, status
        if error is not None:
            self.error = error
            self.error_type = error_type
        elif status == OK:
            self.error = self.error_type = None

    def charge(self, event: Event) -> None:
        """Add an event row's tokens and cost."""
        self.tokens_in += event.tokens_in
        self.tokens_out += event.tokens_out
        # Rounded to the nano-dollar, so sums read as the amounts added (0.0024, not
        # 0.0024000000000000002).
        self.cost_usd = round(self.cost_usd + event.cost_usd, 9)

    def walk(self) -> Iterator[Span]:
        """This span and its descendants, depth first, in order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def otel_attributes(self) -> JSON:
        """The span's attributes as exported: `gen_ai.*` (usage, cost) and `nexus.*`
        (step, attempt, retry reason), `error.type` on failures; None values dropped."""
        out = {k: v for k, v in self.attributes.items() if v is not None}
        if self.operation != STEP:
            out["gen_ai.operation.name"] = self.operation
        if self.operation != EXECUTE_TOOL:
            out["gen_ai.usage.input_tokens"] = self.tokens_in
            out["gen_ai.usage.output_tokens"] = self.tokens_out
            out["gen_ai.usage.cost.amount"] = self.cost_usd
            out["gen_ai.usage.cost.currency"] = "USD"
            if self.cost_estimated:
                out["nexus.cost.estimated"] = True
        if self.step is not None:
            out["nexus.step"] = self.step
        if self.attempt is not None:
            out["nexus.attempt"] = self.attempt
        if self.retry_reason is not None:
            out["nexus.retry_reason"] = self.retry_reason
        if self.status == ERROR:
            out["error.type"] = self.error_type or "Error"
        return dict(sorted(out.items()))

    def to_dict(self) -> JSON:
        """The span and its children as plain data (`nexus traces show --json`, the API)."""
        return {
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "name": self.name,
            "operation": self.operation,
            "status": self.status,
            "error": self.error,
            "error_type": self.error_type,
            "open": self.open,
            "start": self.start,
            "end": self.end,
            "start_seq": self.start_seq,
            "end_seq": self.end_seq,
            "duration_ms": self.duration_ms,
            "step": self.step,
            "attempt": self.attempt,
            "retry_reason": self.retry_reason,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": self.cost_usd,
            "cost_estimated": self.cost_estimated,
            "attributes": self.otel_attributes(),
            "events": [e.to_dict() for e in self.events],
            "children": [c.to_dict() for c in self.children],
        }


@dataclass(slots=True)
class Trace:
    """A session's span tree."""

    session_id: str
    trace_id: str
    root: Span

    def spans(self) -> Iterator[Span]:
        """Every span, depth first."""
        return self.root.walk()

    def to_dict(self) -> JSON:
        """The tree as plain data."""
        return {
            "session_id": self.session_id,
            "trace_id": self.trace_id,
            "root": self.root.to_dict(),
        }


@dataclass(eq=False, slots=True)
class _Step:
    """What the builder tracks of one agent step."""

    span: Span
    attempts: dict[int, Span] = field(default_factory=dict)
    open_llm: Span | None = None
    tools: dict[int, Span] = field(default_factory=dict)  # tool step -> latest attempt
    waiting: set[int] = field(default_factory=set)  # tool steps announced, no result yet
    done: bool = False  # nothing of it is left to run
    sealed: bool = False  # handed out by `apply`


class TraceBuilder:
    """Folds a session's events, in order, into its span tree.

    Args:
        session_id: the session.
        retain: keep finished steps in the tree (the views); False hands each out once
            (`apply`'s result) and forgets it, so a long session's live exporter holds
            only what is still open.
        content: put prompts, completions, tool arguments and results in the spans
            (`gen_ai.input.messages`, `gen_ai.output.messages`,
            `gen_ai.tool.call.arguments`, `gen_ai.tool.call.result`), redacted.
        redactor: masks secrets in that content (default: the credential shapes only).
    """

    def __init__(
        self,
        session_id: str,
        *,
        retain: bool = True,
        content: bool = False,
        redactor: Redactor | None = None,
    ) -> None:
        self.session_id = session_id
        self.trace_id = trace_id(session_id)
        self.retain = retain
        self.content = content
        self.redactor = redactor or Redactor()
        self.root: Span | None = None
        self.model: str | None = None
        self._steps: dict[int, _Step] = {}
        self._owner: dict[int, int] = {}  # tool step -> its agent step

    # -- the fold ---------------------------------------------------------------------

    def apply(self, event: Event) -> list[Span]:
        """Fold one event; returns the spans it finishes for good: steps (each with its
        children) once a later step starts or the session stops, then the root when
        the session ends."""
        root = self.root or self._open_root(event)
        root.charge(event)
        k, p = event.kind, event.payload
        if k == ev.LLM_REQUEST:
            self._llm_request(event, p)
        elif k == ev.LLM_RESPONSE:
            self._llm_response(event, p)
        elif k == ev.LLM_FAILED:
            self._llm_failed(event, p)
        elif k == ev.LLM_LOST:
            self._llm_lost(event, p)
        elif k == ev.TOOL_CALL:
            self._tool_call(event, p)
        elif k == ev.TOOL_RESULT:
            self._tool_result(event, p)
        elif k == ev.SESSION_PAUSED:
            self._close_attempts(
                event, "suspended: the session was paused before it ran", "suspended"
            )
        elif k in ev.TERMINAL_KINDS:
            self._end(root, event, p)
        if k in ROOT_EVENT_KINDS:
            root.events.append(SpanEvent(k, event.ts, event.seq, self._event_attributes(p)))
        if k not in _BOUNDARY:
            return []
        finished = self._seal(exclude=int(p["step"]) if k == ev.LLM_REQUEST else None)
        if k in ev.TERMINAL_KINDS:
            finished.append(root)
        return finished

    def trace(self) -> Trace:
        """The tree so far (open spans marked open)."""
        if self.root is None:
            raise ValueError(f"session {self.session_id} has no events")
        return Trace(self.session_id, self.trace_id, self.root)

    # -- the root ---------------------------------------------------------------------

    def _open_root(self, event: Event) -> Span:
        p = event.payload if event.kind == ev.SESSION_CREATED else {}
        spec = p.get("spec") or {}
        agent = str(spec.get("name") or p.get("agent") or "agent")
        self.model = spec.get("model") or p.get("model")
        self.root = Span(
            span_id(self.session_id, INVOKE_AGENT),
            None,
            f"invoke_agent {agent}",
            INVOKE_AGENT,
            event.ts,
            event.seq,
            attributes={
                "gen_ai.agent.name": agent,
                "gen_ai.conversation.id": self.session_id,
                "gen_ai.request.model": self.model,
            },
        )
        return self.root

    def _end(self, root: Span, event: Event, p: JSON) -> None:
        reason = str(p.get("reason") or "")
        if event.kind == ev.SESSION_COMPLETED:
            status, error, error_type = OK, None, None
        elif event.kind == ev.SESSION_KILLED:
            status, error, error_type = ERROR, f"killed by {p.get('by', '?')}: {reason}", "killed"
        else:
            status, error, error_type = ERROR, reason, "failed"
        self._close_attempts(event, error or "the session ended")
        for step in self._steps.values():
            if not step.done:
                step.done = True
                step.span.close(event, status, error, error_type)
        last = self._steps[max(self._steps)] if self._steps else None
        if status == ERROR and last is not None and last.span.status == OK:
            # The step the session ended in: its last part failed (a kill cut its
            # tool short, a refusal ended the session), so it failed with the session.
            closed = [c for c in last.span.children if c.end_seq is not None]
            if closed and max(closed, key=lambda c: c.end_seq or 0).status == ERROR:
                last.span.status, last.span.error, last.span.error_type = (ERROR, error, error_type)
        root.attributes["nexus.session.status"] = ev.STATUS_BY_KIND[event.kind].value
        root.attributes["nexus.session.steps"] = p.get("steps")
        root.close(event, status, error, error_type)

    def _event_attributes(self, p: JSON) -> JSON:
        out: JSON = {}
        for key, value in p.items():
            if key in _CONTENT_KEYS and not (self.content and key == "note"):
                continue
            if isinstance(value, str):
                out[key] = self.redactor.text(value[:_MAX_EVENT_TEXT])
            elif isinstance(value, bool | int | float):
                out[key] = value
        return out

    # -- steps ------------------------------------------------------------------------

    def _step(self, event: Event, number: int) -> _Step:
        step = self._steps.get(number)
        if step is None:
            root = self.root or self._open_root(event)
            span = Span(
                span_id(self.session_id, STEP, number),
                root.span_id,
                f"step {number}",
                STEP,
                event.ts,
                event.seq,
                step=number,
            )
            step = self._steps[number] = _Step(span)
            root.children.append(span)
        return step

    def _seal(self, exclude: int | None) -> list[Span]:
        """Finished steps other than `exclude`, ended at their last part."""
        finished = []
        for number, step in list(self._steps.items()):
            if not step.done or step.sealed or number == exclude:
                continue
            finished.append(step.span)
            step.sealed = True
            if self.retain:
                continue
            del self._steps[number]
            for tool_step in step.tools:
                self._owner.pop(tool_step, None)
            if self.root is not None:
                self.root.children.remove(step.span)
        return finished

    def _finish_step(self, step: _Step, event: Event, failed: Span | None = None) -> None:
        step.done = True
        span = step.span
        if failed is not None:
            span.close(event, ERROR, failed.error, failed.error_type)
        else:
            span.close(event, OK)

    def _close_attempts(self, event: Event, why: str, error_type: str = "interrupted") -> None:
        """End every attempt still open (a pause, the session's end)."""
        for step in self._steps.values():
            if step.open_llm is not None:
                step.open_llm.close(event, ERROR, why, error_type)
                step.open_llm = None
            for span in step.tools.values():
                if span.open:
                    span.close(event, ERROR, why, error_type)

    # -- LLM attempts -----------------------------------------------------------------

    def _llm_request(self, event: Event, p: JSON) -> None:
        number, attempt = int(p["step"]), int(p.get("attempt", 1))
        step = self._step(event, number)
        retry_reason = p.get("retry_reason")
        if step.open_llm is not None:  # an attempt the worker never finished
            step.open_llm.close(event, ERROR, retry_reason or "superseded", "interrupted")
            step.open_llm.attributes["nexus.interrupted"] = True
        model = p.get("model") or self.model
        span = Span(
            span_id(self.session_id, CHAT, number, attempt),
            step.span.span_id,
            f"chat {model}" if model else "chat",
            CHAT,
            event.ts,
            event.seq,
            step=number,
            attempt=attempt,
            retry_reason=retry_reason,
            attributes={
                "gen_ai.request.model": model,
                "gen_ai.request.max_tokens": (p.get("params") or {}).get("max_tokens"),
            },
        )
        if self.content:
            span.attributes["gen_ai.input.messages"] = self._text(p.get("messages", []))
        step.attempts[attempt] = span
        step.open_llm = span
        step.span.children.append(span)
        step.span.attributes["nexus.attempts"] = len(step.attempts)

    def _llm_response(self, event: Event, p: JSON) -> None:
        number = int(p["step"])
        step = self._step(event, number)
        span = step.open_llm or self._synthetic_attempt(step, event, number)
        step.open_llm = None
        span.charge(event)
        step.span.charge(event)
        if p.get("cost_estimated") or p.get("usage_estimated"):
            self._estimated(step, span)
        a = span.attributes
        a["gen_ai.provider.name"] = p.get("provider") or None
        a["gen_ai.response.model"] = p.get("model") or None
        a["gen_ai.response.finish_reasons"] = (
            [p["finish_reason"]] if p.get("finish_reason") else None
        )
        a["nexus.usage_problem"] = p.get("usage_problem")
        if p.get("attempts", 1) != 1:
            a["nexus.provider.attempts"] = p["attempts"]
            a["nexus.provider.failures"] = [str(f) for f in p.get("failures", [])] or None
        if self.root is not None and p.get("provider"):
            self.root.attributes["gen_ai.provider.name"] = p["provider"]
        message = p.get("message") or {}
        if self.content:
            a["gen_ai.output.messages"] = self._text([message])
        span.close(event, OK)
        calls = message.get("tool_calls") or ()
        step.span.attributes["nexus.tool_calls"] = len(calls)
        step.waiting = {number + i + 1 for i in range(len(calls))}
        for tool_step in step.waiting:
            self._owner[tool_step] = number
        if not step.waiting:
            self._finish_step(step, event)

    def _llm_failed(self, event: Event, p: JSON) -> None:
        number = int(p["step"])
        step = self._step(event, number)
        span = step.attempts.get(int(p.get("attempt", 1))) or step.open_llm
        if span is None:
            span = self._synthetic_attempt(step, event, number, int(p.get("attempt", 1)))
        step.open_llm = None
        error = str(p.get("error") or "the LLM call failed")
        span.close(event, ERROR, error, str(p.get("error_type") or "Error"))
        if p.get("by") not in (None, "execute"):
            span.attributes["nexus.refused_by"] = p["by"]
        if p.get("interrupted"):
            span.attributes["nexus.interrupted"] = True
        # An LLM step without a response ends the session: the step ends with it.
        self._finish_step(step, event, failed=span)

    def _llm_lost(self, event: Event, p: JSON) -> None:
        """The provider billed an attempt whose answer never reached the journal."""
        number = int(p["step"])
        step = self._steps.get(number)
        if step is None:
            return
        attempt = int(p.get("attempt", 1))
        span = step.attempts.get(attempt) or self._synthetic_attempt(step, event, number, attempt)
        span.charge(event)
        step.span.charge(event)
        self._estimated(step, span)
        span.attributes["nexus.lost"] = True
        why = LOST_WHY.get(str(p.get("why")), str(p.get("why") or "the response was lost"))
        if span.open:
            span.close(event, ERROR, why, "lost")
            if step.open_llm is span:
                step.open_llm = None

    def _estimated(self, step: _Step, span: Span) -> None:
        """Mark a cost as estimated up to the root."""
        span.cost_estimated = step.span.cost_estimated = True
        if self.root is not None:
            self.root.cost_estimated = True

    def _synthetic_attempt(
        self, step: _Step, event: Event, number: int, attempt: int | None = None
    ) -> Span:
        """An attempt whose `llm.request` is missing (a journal cut short): it starts
        at the event that names it."""
        attempt = attempt or max(step.attempts, default=0) + 1
        span = Span(
            span_id(self.session_id, CHAT, number, attempt),
            step.span.span_id,
            f"chat {self.model}" if self.model else "chat",
            CHAT,
            event.ts,
            event.seq,
            step=number,
            attempt=attempt,
        )
        step.attempts[attempt] = span
        step.span.children.append(span)
        step.span.attributes["nexus.attempts"] = len(step.attempts)
        return span

    # -- tool attempts ----------------------------------------------------------------

    def _tool_owner(self, event: Event, tool_step: int) -> _Step:
        owner = self._owner.get(tool_step)
        if owner is None:  # no response announced it: hang it on the latest step
            owner = max(self._steps, default=tool_step)
            self._owner[tool_step] = owner
        return self._step(event, owner)

    def _tool_call(self, event: Event, p: JSON) -> None:
        number, attempt = int(p["step"]), int(p.get("attempt", 1))
        step = self._tool_owner(event, number)
        retry_reason = p.get("retry_reason")
        before = step.tools.get(number)
        if before is not None and before.open:  # an attempt the worker never finished
            before.close(event, ERROR, retry_reason or "superseded", "interrupted")
            before.attributes["nexus.interrupted"] = True
        step.tools[number] = self._tool_span(step, event, p, number, attempt, retry_reason)

    def _tool_span(
        self, step: _Step, event: Event, p: JSON, number: int, attempt: int, retry: str | None
    ) -> Span:
        name = str(p.get("name") or "tool")
        span = Span(
            span_id(self.session_id, EXECUTE_TOOL, number, attempt),
            step.span.span_id,
            f"execute_tool {name}",
            EXECUTE_TOOL,
            event.ts,
            event.seq,
            step=number,
            attempt=attempt,
            retry_reason=retry,
            attributes={
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": p.get("call_id") or None,
                "gen_ai.tool.type": "function",
            },
        )
        if self.content and "arguments" in p:
            span.attributes["gen_ai.tool.call.arguments"] = self.redactor.text(str(p["arguments"]))
        step.span.children.append(span)
        return span

    def _tool_result(self, event: Event, p: JSON) -> None:
        number, attempt = int(p["step"]), int(p.get("attempt", 1))
        step = self._tool_owner(event, number)
        span = step.tools.get(number)
        if span is None or span.attempt != attempt:
            span = self._tool_span(step, event, p, number, attempt, None)
            step.tools[number] = span
        if "error" in p:
            span.close(event, ERROR, str(p["error"]), str(p.get("error_type") or "Error"))
            if p.get("by"):
                span.attributes["nexus.refused_by"] = p["by"]
        else:
            span.close(event, OK)
        if self.content:
            key = "error" if "error" in p else "result"
            span.attributes["gen_ai.tool.call.result"] = self._text(p.get(key))
        step.waiting.discard(number)
        if not step.waiting and not step.done and step.open_llm is None:
            self._finish_step(step, event)

    def _text(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return self.redactor.text(text)


def build_trace(
    events: Iterable[Event], *, content: bool = False, redactor: Redactor | None = None
) -> Trace:
    """The span tree of a session from its journal (all of it, in order).

    Raises:
        ValueError: there are no events.
    """
    builder: TraceBuilder | None = None
    for event in events:
        if builder is None:
            builder = TraceBuilder(event.session_id, content=content, redactor=redactor)
        builder.apply(event)
    if builder is None:
        raise ValueError("a trace needs at least the session's first event")
    return builder.trace()
