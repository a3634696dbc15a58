"""Sessions' traces exported over OTLP/HTTP (protobuf) while they run, through the
OpenTelemetry SDK (the `otel` extra, imported only when an endpoint is configured).

`TraceExport` is a `Projection` and a `SessionHook` registered with the runtime, plus a
listener on its journal. It folds each running session's events through the same
`TraceBuilder` as `nexus traces show` (`nexus.observe.spans`), so the exported tree and
the journal's views are one definition, and it hands a step's spans to a
`BatchSpanProcessor` when the step is finished for good (the next step starts, or the
session stops), and the root span when the session ends. The step path only puts each
event on a queue: the exporter's thread folds them in order, makes the SDK's spans and
hands them on (done on the event loop, that work made a durable run 12% slower against
a 0 ms model); the processor's thread encodes and sends the batches.

Exactly once, as far as the journal can say:

* A resumed run folds the journal it replays without exporting: what the crashed run
  finished was exported by that run. It exports what it journals itself, which
  includes the steps the crashed run left open (their first attempts too).
* What is handed out is durable: a step is handed out at an event that is never
  deferred, so it is committed (a crash cannot leave a span for an outcome the journal
  lost, which the resumed run would export again with the same ids).
* Ids are deterministic (`spans.trace_id`, `spans.span_id`), so a resumed session
  continues the same trace.
* What is lost: spans still queued when a worker dies by SIGKILL (at most
  `FOLD_EVERY_S` plus `otlp_batch_delay_s` of them; a clean stop flushes). The
  journal still has them (`nexus traces show`).
* A session ended without a run in this process (killed while queued or paused, failed
  before it could start) is exported by the listener, from the journal: its root span
  and the step its pause left open.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nexus import __version__
from nexus import events as ev
from nexus.config import Settings, parse_headers
from nexus.errors import ConfigError
from nexus.observe.spans import CHAT, ERROR, OK, Span, TraceBuilder
from nexus.runtime.journal import Journal
from nexus.runtime.redact import Redactor
from nexus.types import Event, Projection, RunContext, SessionHook, SessionStatus

log = logging.getLogger("nexus.observe")

TRACES_PATH = "/v1/traces"
FOLD_EVERY_S = 0.05  # how often the exporter's thread folds what is queued
_ENDS = frozenset({ev.SESSION_PAUSED, *ev.TERMINAL_KINDS})


@dataclass(frozen=True, slots=True)
class OtlpConfig:
    """Where and how spans are exported (from the settings, then OTEL_* variables)."""

    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict)
    service_name: str = "nexus"
    timeout_s: float = 10.0
    batch_delay_s: float = 1.0
    content: bool = False


def otlp_config(settings: Settings, environ: Mapping[str, str] | None = None) -> OtlpConfig | None:
    """The export's configuration, or None when no endpoint is set.

    `NEXUS_OTLP_*` first, then the OpenTelemetry variables a collector's users already
    set: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the full URL), OTEL_EXPORTER_OTLP_ENDPOINT
    (a base URL), OTEL_EXPORTER_OTLP_[TRACES_]HEADERS, OTEL_SERVICE_NAME.
    """
    env = os.environ if environ is None else environ
    endpoint = settings.otlp_endpoint
    if endpoint is None and env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        endpoint = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    elif endpoint is None and env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    if not endpoint:
        return None
    endpoint = endpoint.rstrip("/")
    if not endpoint.endswith(TRACES_PATH):
        endpoint += TRACES_PATH
    if settings.otlp_headers is not None:
        raw = settings.otlp_headers.get_secret_value()
    else:
        raw = env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get(
            "OTEL_EXPORTER_OTLP_HEADERS", ""
        )
    try:
        headers = parse_headers(raw)
    except ValueError as exc:
        raise ConfigError(f"OTLP headers: {exc}") from None
    return OtlpConfig(
        endpoint=endpoint,
        headers=headers,
        service_name=settings.otlp_service_name or env.get("OTEL_SERVICE_NAME") or "nexus",
        timeout_s=settings.otlp_timeout_s,
        batch_delay_s=settings.otlp_batch_delay_s,
        content=settings.trace_content,
    )


@dataclass(eq=False, slots=True)
class LiveTrace:
    """One running session's state in the exporter."""

    builder: TraceBuilder | None = None
    live: bool = False  # False while the run replays its journal


class TraceExport(Projection[LiveTrace], SessionHook):
    """Exports each session's spans as it runs (see the module's docstring).

    Args:
        config: where to.
        redactor: masks secrets in every string that leaves (the runtime's).
        journal: the runtime's journal; its appends outside a run (a kill of a paused
            session) are exported from it.
        processor: the span processor (default: a `BatchSpanProcessor` around an
            `OTLPSpanExporter`, made at the first span).
    """

    name = "traces"

    def __init__(
        self,
        config: OtlpConfig,
        redactor: Redactor,
        journal: Journal | None = None,
        *,
        processor: Any = None,
    ) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        except ImportError:
            raise ConfigError(
                "an OTLP endpoint is configured but the OpenTelemetry SDK is not installed: "
                "pip install 'nexus-runtime[otel]'"
            ) from None
        self.config = config
        self.redactor = redactor
        self.journal = journal
        self._resource = Resource.create(
            {"service.name": config.service_name, "service.version": __version__}
        )
        self._scope = InstrumentationScope("nexus", __version__)
        self._processor = processor
        self._lock = threading.Lock()
        self._live: set[str] = set()  # sessions running here, live
        self._unsubscribe = None if journal is None else journal.subscribe(self._appended)
        self._closing = False  # shutdown began: nothing more is queued
        self._closed = False  # the processor is shut down
        # (state, event, live) in the order the runtime applied them; a threading.Event
        # asks to be set when everything before it is folded; None ends the thread.
        self._queue: deque[tuple[LiveTrace, Event, bool] | threading.Event | None] = deque()
        self._wake = threading.Event()  # fold now (a flush, the end) rather than on the tick
        self._folder: threading.Thread | None = None

    # -- the projection and the hook -----------------------------------------------------

    def initial(self) -> LiveTrace:
        return LiveTrace()

    def apply(self, state: LiveTrace, event: Event) -> LiveTrace:
        if self._closing:
            return state
        if self._folder is None:
            self._start()
        self._queue.append((state, event, state.live))
        if state.live and event.kind in _ENDS:
            self._live.discard(event.session_id)
        return state

    def _start(self) -> None:
        with self._lock:
            if self._folder is None:
                self._folder = threading.Thread(
                    target=self._fold_all, name="nexus-trace-export", daemon=True
                )
                self._folder.start()
                # The CLI's processes end without closing the runtime (`nexus run`,
                # `nexus kill`): fold and flush what is queued as they exit.
                atexit.register(self.shutdown)

    def _fold_all(self) -> None:
        """The exporter's thread: every `FOLD_EVERY_S` (or when woken), fold the queued
        events into their sessions' traces and export what live runs finished. Woken
        per event, the thread took the GIL from the event loop at every step."""
        while True:
            self._wake.wait(FOLD_EVERY_S)
            self._wake.clear()
            while self._queue:
                item = self._queue.popleft()
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                state, event, live = item
                try:
                    if state.builder is None:
                        state.builder = self._builder(event.session_id)
                    finished = state.builder.apply(event)
                    if live and finished:
                        self.export(state.builder.trace_id, finished)
                except Exception:  # a span that cannot be made never stops the others
                    log.exception("trace export of session %s failed", event.session_id)

    def _drain(self, timeout_s: float) -> bool:
        """Wait until every event queued so far is folded and handed on."""
        folder = self._folder
        if folder is None or not folder.is_alive():
            return True
        done = threading.Event()
        self._queue.append(done)
        self._wake.set()
        return done.wait(timeout_s)

    async def session_started(self, run: RunContext) -> None:
        self._go_live(run)

    async def session_resumed(self, run: RunContext) -> None:
        self._go_live(run)

    async def session_ended(self, run: RunContext, status: SessionStatus) -> None:
        self._live.discard(run.session_id)

    def _go_live(self, run: RunContext) -> None:
        run.view(self).live = True
        self._live.add(run.session_id)

    def _builder(self, session_id: str) -> TraceBuilder:
        return TraceBuilder(
            session_id, retain=False, content=self.config.content, redactor=self.redactor
        )

    def _appended(self, event: Event) -> None:
        """A session ended by an append outside its run: export its end from the journal.
        (A journal listener: runs on the appending task and must not raise.)"""
        if event.kind not in ev.TERMINAL_KINDS or event.session_id in self._live:
            return
        if self.journal is None:
            return
        try:
            builder = self._builder(event.session_id)
            for before in self.journal.events(event.session_id):
                if before.seq >= event.seq:
                    break
                builder.apply(before)
            self.export(builder.trace_id, builder.apply(event))
        except Exception:  # an export problem never fails the append that caused it
            log.exception("trace export of session %s failed", event.session_id)

    # -- export ----------------------------------------------------------------------------

    def export(self, trace_id: str, spans: Sequence[Span]) -> None:
        """Hand finished spans (with their children) to the processor."""
        processor = self._processor or self._open()
        if processor is None:
            return
        for top in spans:
            for span in top.walk():
                if not span.open:
                    processor.on_end(self.readable(trace_id, span))

    def readable(self, trace_id: str, span: Span) -> Any:
        """`span` as an OpenTelemetry `ReadableSpan`, every string redacted."""
        from opentelemetry.sdk.trace import Event as OtelEvent
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        flags = TraceFlags(TraceFlags.SAMPLED)
        tid = int(trace_id, 16)
        context = SpanContext(tid, int(span.span_id, 16), is_remote=False, trace_flags=flags)
        parent = None
        if span.parent_id is not None:
            parent = SpanContext(tid, int(span.parent_id, 16), is_remote=False, trace_flags=flags)
        if span.status == ERROR:
            status = Status(StatusCode.ERROR, self._clean(span.error or "error"))
        elif span.status == OK:
            # The journal knows the outcome: OK, not the instrumentation's UNSET.
            status = Status(StatusCode.OK)
        else:
            status = Status(StatusCode.UNSET)
        return ReadableSpan(
            name=span.name,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=self._attributes(span.otel_attributes()),
            events=[
                OtelEvent(e.name, self._attributes(e.attributes), timestamp=nanos(e.ts))
                for e in span.events
            ],
            kind=SpanKind.CLIENT if span.operation == CHAT else SpanKind.INTERNAL,
            status=status,
            start_time=nanos(span.start),
            end_time=nanos(span.end if span.end is not None else span.start),
            instrumentation_scope=self._scope,
        )

    def _attributes(self, values: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, str):
                out[key] = self._clean(value)
            elif isinstance(value, list | tuple):
                out[key] = [self._clean(v) if isinstance(v, str) else v for v in value]
            elif value is not None:
                out[key] = value
        return out

    def _clean(self, text: str) -> str:
        # `needed` first: one cheap scan clears the common string (a model or tool
        # name) without the full pattern search (it made a span 3x dearer).
        return self.redactor.text(text) if self.redactor.needed(text) else text

    def _open(self) -> Any:
        """The batch processor and OTLP exporter, made at the first span (a read-only
        command with an endpoint configured starts no thread)."""
        with self._lock:
            if self._processor is None and not self._closed:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
                from opentelemetry.sdk.trace.export import BatchSpanProcessor

                exporter = OTLPSpanExporter(
                    endpoint=self.config.endpoint,
                    headers=dict(self.config.headers),
                    timeout=self.config.timeout_s,
                )
                self._processor = BatchSpanProcessor(
                    exporter, schedule_delay_millis=self.config.batch_delay_s * 1000
                )
                atexit.register(self.shutdown)  # flush what is queued at exit
            return self._processor

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Fold and send what is queued now; True if it all left in time."""
        if not self._drain(timeout_s):
            return False
        processor = self._processor
        return True if processor is None else bool(processor.force_flush(int(timeout_s * 1000)))

    def shutdown(self) -> None:
        """Fold what is queued, flush and stop the processor (idempotent); stop
        listening to the journal."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        atexit.unregister(self.shutdown)
        if self._folder is not None:
            self._queue.append(None)
            self._wake.set()
            self._folder.join(self.config.timeout_s + 30.0)
        with self._lock:
            self._closed = True
            processor, self._processor = self._processor, None
        if processor is not None:
            processor.shutdown()


def nanos(ts: float) -> int:
    """Epoch seconds as the integer nanoseconds OpenTelemetry takes."""
    return round(ts * 1_000_000_000)


def trace_export(
    settings: Settings, redactor: Redactor, journal: Journal | None = None
) -> TraceExport | None:
    """The runtime's exporter when an OTLP endpoint is configured, else None. Header
    values are registered as secrets: they never reach the journal or the logs."""
    config = otlp_config(settings)
    if config is None:
        return None
    for value in config.headers.values():
        if len(value) >= 4:
            redactor.register(value)
    return TraceExport(config, redactor, journal)
