"""The control channel: how anyone changes a running session from outside.

Any process (the CLI, the API, another worker, later an automatic trigger) posts a
*command* for a session: a durable row of the store's `commands` table, with who
sent it and why. The session's own runner applies it and journals the effect
itself (`session.killed`, `session.paused`, `session.control`), so the runner
stays the only writer of its journal. The journal also says which commands were
applied (each effect carries its command's id): a command is applied once, across
crashes and workers.

How a runner learns of a command:

* at attach (a run starts or resumes): the session's commands since the last one
  its journal applied;
* posted in this process (the API inside `nexus start`, Ctrl-C of `nexus run`): at
  once, handed to the runner in memory;
* posted in another process: one watcher thread per process reads the commands
  table after the last id it saw (one indexed query, whatever the number of
  sessions) and hands each to its runner. It reads when the store's `Wakeup`
  rings (on PostgreSQL the posting transaction's NOTIFY, heard by the process's
  one listen connection), else every `control_poll_s` (SQLite), or at the slow
  safety interval while NOTIFY wakes it.

The per-step check is then a look at two attributes in memory. A kill also
cancels the step in flight: an LLM request is aborted; a tool coroutine is
cancelled; a sync tool's thread cannot be stopped, so it is abandoned, and the
journal says which.

A session with no runner (queued, or paused) is ended by the sender itself: its
`session.killed` is appended at the next seq of the journal, which a runner that
starts meanwhile would also take. Exactly one of them wins that seq (the store's
`UNIQUE(session_id, seq)`); a runner that loses finds the session ended and stops.

Kinds here: `kill`, `pause`, `resume` (with an optional operator note). Later
features add theirs (`approve`, `deny`, `rollback`, `note`) to `KINDS` and apply
them in their own guard or hook.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

from nexus import events as ev
from nexus.errors import (
    ConfigError,
    JournalError,
    SessionFinished,
    SessionKilled,
    SessionNotFound,
    SessionSuspended,
)
from nexus.runtime.journal import Journal
from nexus.storage.base import CommandRow, Store
from nexus.storage.wake import COMMANDS, Waiter
from nexus.types import (
    Event,
    Guard,
    Next,
    Outcome,
    Projection,
    RunContext,
    SessionHook,
    SessionStatus,
    Step,
)

KILL: Final = "kill"
PAUSE: Final = "pause"
RESUME: Final = "resume"
KINDS: Final = frozenset({KILL, PAUSE, RESUME})
STAGE: Final = 100  # pipeline.KILL: the outermost guard

MAX_REASON = 1000
MAX_NOTE = 20_000

log = logging.getLogger("nexus.control")


class Applied(Projection[int]):
    """The id of the last command a session's journal applied (0: none)."""

    name = "control"

    def initial(self) -> int:
        return 0

    def apply(self, state: int, event: Event) -> int:
        command = event.payload.get("command") if isinstance(event.payload, dict) else None
        return command if isinstance(command, int) and command > state else state


@dataclass(eq=False)
class RunControl:
    """The runner's end of the channel for one session running in this process.

    A kill is taken in two moves. `notice` (any thread: the watcher's, or the
    sender's) sets `stopped` at once: from then on no step starts and a sync tool
    checking `ToolContext.check_stopped` makes no effect, however busy the event
    loop is. `deliver` (on the loop) then cancels the step in flight."""

    session_id: str
    applied: int = 0  # the newest command id delivered or applied
    kill: CommandRow | None = None
    pause: CommandRow | None = None
    resumes: list[CommandRow] = field(default_factory=list)
    step_task: asyncio.Task[Any] | None = None  # set while a step runs
    step_tool: Any = None  # the Tool of a running tool step (how it can be stopped)
    stopped: threading.Event = field(default_factory=threading.Event)
    noticed: CommandRow | None = None  # the kill, as soon as any thread saw it
    noticed_at: float | None = None

    def notice(self, command: CommandRow) -> None:
        """Any thread: a kill stops every further effect now."""
        if command.kind == KILL and self.noticed is None and command.id > self.applied:
            self.noticed, self.noticed_at = command, time.time()
            self.stopped.set()

    def deliver(self, command: CommandRow) -> None:
        """On the loop: take a command (once: redelivery by the poller is ignored)."""
        if command.id <= self.applied:
            return
        self.notice(command)
        self.applied = command.id
        if command.kind == KILL:
            if self.kill is None:
                self.kill = command
                if self.step_task is not None and not self.step_task.done():
                    self.step_task.cancel()  # only while suspended inside the step
        elif command.kind == PAUSE:
            self.pause = self.pause or command
        elif command.kind == RESUME:
            self.pause = None  # a resume cancels a pause not yet applied
            self.resumes.append(command)

    def stop_now(self) -> None:
        """Raise the control-flow exit a pending kill or pause asks for."""
        kill = self.kill or self.noticed
        if kill is not None:
            raise self.killed(kill)
        if self.pause is not None:
            cmd = self.pause
            raise SessionSuspended(cmd.reason, by=cmd.by, command=cmd.id)

    def killed(self, cmd: CommandRow, interrupted: str | None = None) -> SessionKilled:
        """The exit for `cmd`, saying when this process noticed it."""
        return SessionKilled(
            cmd.reason,
            by=cmd.by,
            command=cmd.id,
            interrupted=interrupted,
            noticed_at=self.noticed_at,
        )


class Control(Guard, SessionHook):
    """The control channel of one runtime: the sender's API (`post`) and the
    guard and hook that apply commands in this process's running sessions.

    Args:
        store: where commands live.
        journal: the journal (to end sessions that have no runner).
        poll_s: how often this process looks for commands posted elsewhere.
    """

    stage = STAGE

    def __init__(self, store: Store, journal: Journal, *, poll_s: float = 0.05) -> None:
        self.store = store
        self.journal = journal
        self.poll_s = poll_s
        self._runs: dict[str, RunControl] = {}
        self._seen = 0
        self._seen_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._waiter: Waiter | None = None  # the watcher's doorbell, while it runs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = threading.Event()  # set while sessions run here
        self._watcher_lock = threading.Lock()
        self._closing = False

    # -- sending --------------------------------------------------------------------

    async def post(
        self,
        session_id: str,
        kind: str,
        *,
        by: str,
        reason: str = "",
        note: str | None = None,
    ) -> CommandRow:
        """Post a command for a session; returns it as stored.

        `SessionNotFound` for an unknown session; `SessionFinished` if it has ended
        (a kill of a killed session is not an error: kills are idempotent);
        `ConfigError` for an unknown kind, or a resume of a session that is not
        paused. A kill of a session with no runner (queued, paused) ends it here.
        """
        if kind not in KINDS:
            raise ConfigError(f"unknown command {kind!r} (known: {', '.join(sorted(KINDS))})")
        if len(reason) > MAX_REASON:
            raise ConfigError(f"the reason is {len(reason)} characters, over {MAX_REASON}")
        if note is not None and len(note) > MAX_NOTE:
            raise ConfigError(f"the note is {len(note)} characters, over {MAX_NOTE}")
        row = self.store.session(session_id)
        if row is None:
            raise SessionNotFound(f"no session {session_id!r}")
        status = SessionStatus(row.status)
        if status.finished:
            if kind == KILL and status is SessionStatus.KILLED:
                return self._last(session_id, KILL) or _synthetic(session_id, row.reason)
            raise SessionFinished(f"session {session_id} has already ended {status.value}")
        if kind == RESUME and status is not SessionStatus.PAUSED:
            raise ConfigError(f"session {session_id} is {status.value}, not paused")
        data: dict[str, Any] = {} if note is None else {"note": note}
        command = self.store.post_command(session_id, kind, by, reason or _default(kind), data)
        run = self._runs.get(session_id)
        if run is not None:
            run.deliver(command)  # running here: at once
        elif kind == KILL and status in (SessionStatus.QUEUED, SessionStatus.PAUSED):
            await self._kill_unstarted(command)
        return command

    def _last(self, session_id: str, kind: str) -> CommandRow | None:
        found = [c for c in self.store.commands(session_id) if c.kind == kind]
        return found[-1] if found else None

    async def _kill_unstarted(self, command: CommandRow) -> None:
        """End a session that no runner holds; a runner that takes it meanwhile
        either loses the seq race (and stops) or applies the command itself."""
        sid = command.session_id
        row = self.store.session(sid)
        self.journal.forget(sid)  # the next seq from the database, not a cache
        payload = {
            "reason": command.reason,
            "by": command.by,
            "steps": row.steps if row else 0,
            "command": command.id,
            "interrupted": "the session was not running: no step was cut short",
        }
        try:
            await self.journal.append_async(sid, ev.SESSION_KILLED, payload, reason=command.reason)
        except JournalError:
            log.info("session %s started as it was killed; its runner applies the kill", sid)
        finally:
            self.journal.forget(sid)

    # -- applying (hook) ---------------------------------------------------------------

    async def session_started(self, run: RunContext) -> None:
        await self._attach(run)

    async def session_resumed(self, run: RunContext) -> None:
        await self._attach(run)

    async def session_ended(self, run: RunContext, status: SessionStatus) -> None:
        self._runs.pop(run.session_id, None)
        if not self._runs:
            self._wake.clear()

    def stop_event(self, session_id: str) -> threading.Event:
        """The event set when the session running here is killed (for its tools)."""
        ctl = self._runs.get(session_id)
        return ctl.stopped if ctl is not None else threading.Event()

    async def _attach(self, run: RunContext) -> None:
        sid = run.session_id
        if not self._runs:
            # From idle: the watcher starts at the newest command; this session's
            # older ones are read just below.
            latest = self.store.latest_command_id()
            with self._seen_lock:
                self._seen = max(self._seen, latest)
        ctl = RunControl(sid)
        self._runs[sid] = ctl
        self._ensure_watcher()
        applied = run.view(Applied) if Applied.name in run.state else 0
        ctl.applied = applied
        for command in self.store.commands(sid, applied):
            ctl.deliver(command)
        for command in ctl.resumes:
            payload: dict[str, Any] = {
                "command": command.id,
                "kind": RESUME,
                "by": command.by,
                "reason": command.reason,
            }
            if "note" in command.data:
                payload["note"] = command.data["note"]
            await run.record(ev.SESSION_CONTROL, payload)
        ctl.resumes.clear()
        ctl.stop_now()  # killed or paused before it ran: end it before any step

    # -- applying (guard) --------------------------------------------------------------

    async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
        ctl = self._runs.get(run.session_id)
        if ctl is None:
            return await call_next(step)
        ctl.stop_now()
        task = asyncio.current_task()
        ctl.step_task = task
        ctl.step_tool = run.toolbox.get(step.tool_call().name) if step.kind == "tool" else None
        try:
            return await call_next(step)
        except asyncio.CancelledError:
            if ctl.kill is None or task is None:
                raise  # the worker stops: the step is tried again on resume
            task.uncancel()
            raise ctl.killed(ctl.kill, _what_was_cut(step, ctl.step_tool)) from None
        finally:
            ctl.step_task = None
            ctl.step_tool = None

    # -- the watcher -------------------------------------------------------------------

    def _ensure_watcher(self) -> None:
        # A thread, not a task: a busy event loop (hundreds of sessions) must not
        # delay the moment a kill stops every further effect.
        self._loop = asyncio.get_running_loop()
        with self._watcher_lock:
            self._wake.set()
            if self._watcher is None:
                self._closing = False
                self._watcher = threading.Thread(
                    target=self._watch, name="nexus-control", daemon=True
                )
                self._watcher.start()

    def _watch(self) -> None:
        wakeup = self.store.wakeup()
        waiter = self._waiter = wakeup.waiter(COMMANDS)
        try:
            while not self._closing:
                if not self._wake.wait(timeout=1.0):
                    with self._watcher_lock:
                        if not self._wake.is_set():  # idle for a second: end; a run restarts it
                            self._watcher = None
                            return
                    continue
                waiter.clear()  # before the read: a command posted after it rings again
                try:
                    self.poll()
                except Exception:  # a busy or briefly broken database: try again
                    log.exception("reading the control channel failed")
                waiter.wait(wakeup.timeout(self.poll_s))
        finally:
            waiter.close()

    def poll(self) -> int:
        """Hand commands posted since the last poll to their runners here (any
        thread); returns how many were for this process's sessions."""
        handed = 0
        while True:
            with self._seen_lock:
                seen = self._seen
            batch = self.store.commands_after(seen, 1000)
            for command in batch:
                run = self._runs.get(command.session_id)
                if run is not None:
                    run.notice(command)  # effects stop now, in this thread
                    self._hand(run, command)
                    handed += 1
            if batch:
                with self._seen_lock:
                    self._seen = max(self._seen, batch[-1].id)
            if len(batch) < 1000:
                return handed

    def _hand(self, run: RunControl, command: CommandRow) -> None:
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            run.deliver(command)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(run.deliver, command)

    async def aclose(self) -> None:
        """Stop the watcher."""
        self._closing = True
        with self._watcher_lock:
            self._wake.set()
            if self._waiter is not None:
                self._waiter.set()
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await asyncio.to_thread(watcher.join, 5.0)


def resume_pending(store: Store, events: list[Event]) -> bool:
    """Whether a paused session has a resume its journal has not applied yet."""
    applied = Applied()
    last = 0
    for event in events:
        last = applied.apply(last, event)
    return any(c.kind == RESUME for c in store.commands(events[0].session_id, last))


def _what_was_cut(step: Step, tool: Any) -> str:
    if step.kind == "llm":
        return "the LLM request in flight was aborted"
    if tool is not None and not inspect.iscoroutinefunction(tool.fn):
        return "the tool ran in a thread, which cannot be stopped: it was abandoned"
    return "the tool was cancelled"


def _default(kind: str) -> str:
    return {KILL: "killed", PAUSE: "paused", RESUME: "resumed"}.get(kind, kind)


def _synthetic(session_id: str, reason: str | None) -> CommandRow:
    # A session killed without a command (a guard's kill): nothing to return but its end.
    return CommandRow(0, session_id, KILL, "kernel", reason or "killed", {}, 0.0)
